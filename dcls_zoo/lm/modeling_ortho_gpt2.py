"""GPT-2 with a learnable Hermite / Fourier / tropical activation in every MLP (arXiv 2502.01247).

Only the MLP activation changes (one coefficient set per block, as in the authors' nanoGPT models); attention,
embeddings and the heads are transformers' GPT-2, so a standard GPT-2 checkpoint loads into these classes with
every shared weight kept and only the activation coefficients reported as new (initialised by `_init_weights`
to the activations' variance-preserving values).

Self-contained (transformers + the sibling files), so `save_pretrained` folders load with `trust_remote_code=True`
without dcls_zoo; see `ortho_activations.py`.
"""
from __future__ import annotations

import inspect
import os
import shutil

import torch
from torch import nn
from transformers import initialization as init
from transformers.cache_utils import Cache
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
        # transformers copied the re-exporting ortho_activations.py; put the implementation in its place
        copied = os.path.join(save_directory, "ortho_activations.py")
        implementation = inspect.getsourcefile(ACTIVATION_CLASSES["hermite"])
        if os.path.isfile(copied) and os.path.abspath(implementation) != os.path.abspath(copied):
            shutil.copyfile(implementation, copied)


def _swap_activations(config: OrthoGPT2Config, model: GPT2Model) -> None:
    if config.activation == "gelu":
        return  # GPT-2's own config.activation_function
    config.activation_degree = config.resolved_activation_degree()  # saved explicitly from now on
    for block in model.h:
        block.mlp.act = create_activation(config.activation, config.activation_degree,
                                          scheme=config.activation_scheme)


class OrthoGPT2Model(OrthoGPT2PreTrainedModel, GPT2Model):
    def __init__(self, config: OrthoGPT2Config):
        super().__init__(config)
        # built with fresh, correctly initialised coefficients; `_init_weights` covers from_pretrained's meta path
        _swap_activations(config, self)

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


class OrthoGPT2LMHeadModel(OrthoGPT2PreTrainedModel, GPT2LMHeadModel):
    def __init__(self, config: OrthoGPT2Config):
        # GPT2LMHeadModel.__init__ would build a plain GPT2Model, whose own _init_weights knows no activations
        super(GPT2LMHeadModel, self).__init__(config)
        self.transformer = OrthoGPT2Model(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.post_init()


class OrthoGPT2ForSequenceClassification(OrthoGPT2PreTrainedModel, GPT2ForSequenceClassification):
    def __init__(self, config: OrthoGPT2Config):
        super(GPT2ForSequenceClassification, self).__init__(config)
        self.num_labels = config.num_labels
        self.transformer = OrthoGPT2Model(config)
        self.score = nn.Linear(config.n_embd, self.num_labels, bias=False)
        self.post_init()
