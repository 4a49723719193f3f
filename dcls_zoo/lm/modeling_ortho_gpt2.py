"""GPT-2 with a learnable Hermite / Fourier / tropical activation in every MLP (arXiv 2502.01247).

Only the MLP activation changes (one coefficient set per block, as in the authors' nanoGPT models); attention,
embeddings and the heads are transformers' GPT-2, so a standard GPT-2 checkpoint loads into these classes with
every shared weight kept and only the activation coefficients reported as new (initialised by `_init_weights`
to the activations' variance-preserving values).

Remote code (transformers + the sibling files), so `save_pretrained` folders load with `trust_remote_code=True`
without dcls_zoo; see `ortho_activations.py` and `_copy_activation_sources`.
"""
from __future__ import annotations

import copy
import inspect
import os
import shutil

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
from transformers.dynamic_module_utils import get_relative_import_files
from transformers.utils.deprecation import deprecate_kwarg
from transformers.models.gpt2.modeling_gpt2 import (
    GPT2ForSequenceClassification,
    GPT2LMHeadModel,
    GPT2Model,
    GPT2PreTrainedModel,
)

from .configuration_ortho_gpt2 import OrthoGPT2Config
from .ortho_activations import ACTIVATION_CLASSES, activation_parameter_names, create_activation

__all__ = ["OrthoGPT2PreTrainedModel", "OrthoGPT2Model", "OrthoGPT2LMHeadModel",
           "OrthoGPT2ForSequenceClassification"]

_ACTIVATION_TYPES = tuple(ACTIVATION_CLASSES.values())
# every class a saved folder can be loaded with, written into config.auto_map (transformers only writes the
# saved class's own auto class)
_AUTO_MAP = {
    "AutoConfig": "configuration_ortho_gpt2.OrthoGPT2Config",
    "AutoModel": "modeling_ortho_gpt2.OrthoGPT2Model",
    "AutoModelForCausalLM": "modeling_ortho_gpt2.OrthoGPT2LMHeadModel",
    "AutoModelForSequenceClassification": "modeling_ortho_gpt2.OrthoGPT2ForSequenceClassification",
}


class OrthoGPT2PreTrainedModel(GPT2PreTrainedModel):
    config_class = OrthoGPT2Config
    config: OrthoGPT2Config

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, _ACTIVATION_TYPES):
            # transformers' init functions skip tensors already loaded from a checkpoint
            for name, value in module.initial_parameters().items():
                param = getattr(module, name)
                init.copy_(param, value.to(device=param.device, dtype=param.dtype))
            if getattr(module, "clamp", None) is not None:
                init.constant_(module.clamp.lim_val, module.clamp.init_lim)

    def activation_parameter_names(self) -> set[str]:
        """Learnable-activation parameters: 1-D, trained without weight decay at the common lr (as the authors)."""
        return activation_parameter_names(self)

    def save_pretrained(self, save_directory, *args, **kwargs):
        if self._auto_class is not None:
            self.config.auto_map = dict(_AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        _copy_activation_sources(save_directory)

    def _upload_modified_files(self, working_dir, *args, **kwargs):
        # `save_pretrained(..., push_to_hub=True)` uploads before it returns: complete the remote code first
        _copy_activation_sources(working_dir)
        return super()._upload_modified_files(working_dir, *args, **kwargs)


def _copy_activation_sources(folder: str | os.PathLike) -> None:
    """Make a saved folder's remote code self-contained.

    transformers copies the files that the modeling file imports relatively, from its own folder only: the
    `ortho_activations.py` it copied re-exports `dcls_zoo.layers.activations`, a package in another folder. Put
    the package's registry in its place and the package modules the registry imports next to it (they import only
    torch, the standard library and each other), so the folder loads without dcls_zoo.
    """
    target = os.path.join(folder, "ortho_activations.py")
    registry = inspect.getsourcefile(create_activation)
    if not os.path.isfile(target) or os.path.samefile(registry, target):
        return  # saved without remote code, or into the folder the code runs from
    shutil.copyfile(registry, target)
    for source in get_relative_import_files(registry):
        shutil.copyfile(source, os.path.join(folder, os.path.basename(source)))


def _with_activation_degree(config: OrthoGPT2Config) -> OrthoGPT2Config:
    """The config a model keeps: the activation degree written out (saved explicitly from then on), on a copy when
    that changes it, so the caller's config object is never modified."""
    degree = config.resolved_activation_degree()
    if degree == config.activation_degree:
        return config
    config = copy.deepcopy(config)
    config.activation_degree = degree
    return config


class OrthoGPT2Model(OrthoGPT2PreTrainedModel, GPT2Model):
    def __init__(self, config: OrthoGPT2Config):
        config = _with_activation_degree(config)
        super().__init__(config)
        if config.activation != "gelu":  # "gelu": GPT-2's own config.activation_function
            # fresh, correctly initialised coefficients; `_init_weights` covers from_pretrained's meta path
            for block in self.h:
                block.mlp.act = create_activation(config.activation, config.activation_degree,
                                                  scheme=config.activation_scheme)

    # as GPT2Model.forward: an old `past_key_values=` becomes `cache=` (with transformers' warning) before the check
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        cache: Cache | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        encoder_attention_mask: torch.Tensor | None = None,
        use_cache: bool | None = None,
        **kwargs,
    ):
        """GPT-2's forward, after checking what would otherwise fail deep inside it (an embedding index error, a
        CUDA device-side assert) or silently run past the position table."""
        if not torch.compiler.is_compiling():
            self._check_inputs(input_ids, inputs_embeds, position_ids, cache)
        return super().forward(
            input_ids=input_ids, cache=cache, attention_mask=attention_mask, token_type_ids=token_type_ids,
            position_ids=position_ids, inputs_embeds=inputs_embeds, encoder_hidden_states=encoder_hidden_states,
            encoder_attention_mask=encoder_attention_mask, use_cache=use_cache, **kwargs,
        )

    def _check_inputs(self, input_ids, inputs_embeds, position_ids, cache) -> None:
        tokens = input_ids if input_ids is not None else inputs_embeds
        if tokens is None:
            return  # GPT-2 raises its own error
        length = tokens.shape[-1] if input_ids is not None else tokens.shape[-2]
        if length == 0:
            name = "input_ids" if input_ids is not None else "inputs_embeds"
            raise ValueError(f"{name} holds an empty sequence (shape {tuple(tokens.shape)}): pass at least one token")
        if input_ids is not None and input_ids.numel() and not input_ids.is_floating_point():
            vocab = self.wte.num_embeddings
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= vocab:
                raise ValueError(
                    f"input_ids must be token ids in [0, {vocab}) (the model's vocabulary, config.vocab_size), got "
                    f"ids from {low} to {high}: check the tokenizer matches the model")
        n_positions = self.wpe.num_embeddings
        if position_ids is not None:
            if position_ids.numel() and (int(position_ids.max()) >= n_positions or int(position_ids.min()) < 0):
                raise ValueError(
                    f"position_ids must be in [0, {n_positions}) (config.n_positions), got "
                    f"{int(position_ids.min())} to {int(position_ids.max())}")
            return
        past = cache.get_seq_length() if hasattr(cache, "get_seq_length") else 0
        if past + length > n_positions:
            raise ValueError(
                f"sequence of {past + length} tokens ({past} cached + {length} new) is longer than the "
                f"{n_positions} positions this model has (config.n_positions): truncate it, e.g. the tokenizer's "
                f"truncation=True, max_length={n_positions}")


def _replace_gpt2_body(head: OrthoGPT2PreTrainedModel, config: OrthoGPT2Config) -> None:
    """After a GPT-2 head's own constructor: the plain GPT2Model it built (whose `_init_weights` knows no
    activations) becomes an OrthoGPT2Model, and what is new is initialised.

    The heads run their parent's constructor so that whatever a transformers release sets up there is kept; its
    `post_init` already ran on the plain body, and what it did there from the config (activation checkpointing,
    consumed from `config.gradient_checkpointing`) is done again on the new one. Cost: one throwaway GPT-2 body
    (about 1.3 s more for GPT-2 124M on one CPU thread; nothing under from_pretrained's meta-device build).
    """
    checkpointing = head.is_activation_checkpointing
    head.transformer = OrthoGPT2Model(config)
    head.post_init()
    if checkpointing:
        head.activation_checkpointing_enable()


class OrthoGPT2LMHeadModel(OrthoGPT2PreTrainedModel, GPT2LMHeadModel):
    def __init__(self, config: OrthoGPT2Config):
        config = _with_activation_degree(config)
        super().__init__(config)
        _replace_gpt2_body(self, config)


class OrthoGPT2ForSequenceClassification(OrthoGPT2PreTrainedModel, GPT2ForSequenceClassification):
    def __init__(self, config: OrthoGPT2Config):
        config = _with_activation_degree(config)
        super().__init__(config)
        _replace_gpt2_body(self, config)
