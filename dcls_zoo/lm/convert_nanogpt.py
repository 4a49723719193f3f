"""Convert nanoGPT-layout GPT-2 checkpoints (the authors' `pytorch-language-models` models) to `ortho_gpt2`.

nanoGPT stores `nn.Linear` weights as (out, in); transformers' GPT-2 uses `Conv1D` with (in, out), so
`c_attn`, `c_fc` and both `c_proj` weights are transposed. The authors train without biases (`--bias` off by
default): missing Linear and LayerNorm biases become zeros, which is the same function. The causal-mask buffer
(`attn.bias`, 4-D) and `torch.compile`/DDP prefixes are dropped; the activation (`mlp.act.*`, torchortho names)
is recognised from its keys and its scheme from torchortho's buffers.
"""
from __future__ import annotations

import os
import re
from typing import Any, Union

import torch

from ..layers.activations import ACTIVATION_CLASSES, reference_scheme
from .configuration_ortho_gpt2 import OrthoGPT2Config
from .modeling_ortho_gpt2 import OrthoGPT2LMHeadModel

__all__ = ["convert_nanogpt_state_dict", "load_nanogpt_checkpoint"]

_TRANSPOSED = re.compile(r"\.(attn\.c_attn|attn\.c_proj|mlp\.c_fc|mlp\.c_proj)\.weight$")


def _strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state_dict.items():
        for prefix in ("_orig_mod.", "module."):
            if key.startswith(prefix):
                key = key[len(prefix):]
        out[key] = value
    return out


def _activation_entries(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The first block's activation tensors, by their torchortho names."""
    return {k.split(".mlp.act.", 1)[1]: v for k, v in state_dict.items() if k.startswith("transformer.h.0.mlp.act.")}


def _detect_activation(state_dict: dict[str, torch.Tensor]) -> tuple[str, int | None, str | None]:
    act = _activation_entries(state_dict)
    if not act:
        return "gelu", None, None
    # the key only that torchortho activation has (Hermite and Tropical differ only by their buffers)
    for key, name in (("phases", "fourier"), ("powers_num", "tropical_rational"), ("coeffs", "hermite"),
                      ("powers", "tropical")):
        if key in act:
            return name, _degree(name, act), reference_scheme(act)
    raise ValueError(f"cannot tell the activation from its keys ({', '.join(sorted(act))}: no torchortho buffer "
                     f"names it); pass activation= (one of {sorted(ACTIVATION_CLASSES)})")


def _degree(activation: str, act: dict[str, torch.Tensor]) -> int | None:
    """The degree the activation's tensors were saved with; None for GELU or when they do not tell."""
    cls = ACTIVATION_CLASSES.get(activation)
    return None if cls is None else cls.degree_from_state_dict(act)


def convert_nanogpt_state_dict(
        state_dict: dict[str, torch.Tensor],
        *,
        n_head: int | None = None,
        model_args: dict[str, Any] | None = None,
        **config_overrides: Any,
) -> tuple[OrthoGPT2Config, dict[str, torch.Tensor]]:
    """nanoGPT `GPT` state dict → (`OrthoGPT2Config`, state dict for `OrthoGPT2LMHeadModel`).

    Sizes come from the weights; `n_head` (not recoverable from weights) from `n_head=` or nanoGPT's
    `model_args`. `config_overrides` (e.g. `activation=`, `activation_scheme=`) win over what is detected.
    """
    state_dict = _strip_prefixes(state_dict)
    if "transformer.wte.weight" not in state_dict:
        raise ValueError("not a nanoGPT GPT state dict: no 'transformer.wte.weight' key")
    model_args = dict(model_args or {})
    n_head = n_head if n_head is not None else model_args.get("n_head")
    if n_head is None:
        raise ValueError("n_head cannot be read from the weights; pass n_head= or the checkpoint's model_args")
    vocab_size, n_embd = state_dict["transformer.wte.weight"].shape
    n_layer = 1 + max(int(m.group(1)) for k in state_dict if (m := re.match(r"transformer\.h\.(\d+)\.", k)))
    if "activation" in config_overrides:
        # The activation named by the caller; its scheme still comes from torchortho's buffers when they are
        # there (a legacy checkpoint must not load as the default scheme), its degree from the coefficients.
        activation = config_overrides["activation"]
        act = _activation_entries(state_dict)
        scheme = reference_scheme(act)
        degree = _degree(activation, act)
        requested = config_overrides.get("activation_scheme")
        if scheme is not None and requested is not None and requested != scheme:
            raise ValueError(
                f"activation_scheme={requested!r}, but the checkpoint's torchortho buffers are the {scheme!r} "
                f"scheme's; drop activation_scheme= (it is detected) or pass activation_scheme={scheme!r}")
    else:
        activation, degree, scheme = _detect_activation(state_dict)
    dropout = float(model_args.get("dropout", 0.0))
    lm_head = state_dict.get("lm_head.weight")
    tied = lm_head is None or lm_head.data_ptr() == state_dict["transformer.wte.weight"].data_ptr() or torch.equal(
        lm_head, state_dict["transformer.wte.weight"])
    config_kwargs = dict(
        vocab_size=vocab_size, n_positions=state_dict["transformer.wpe.weight"].shape[0], n_embd=n_embd,
        n_layer=n_layer, n_head=n_head, activation=activation, activation_degree=degree,
        activation_scheme=scheme or "default", activation_function="gelu",  # nanoGPT's nn.GELU() is exact
        resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout, layer_norm_epsilon=1e-5,
        tie_word_embeddings=tied,
    )
    config_kwargs.update(config_overrides)
    config = OrthoGPT2Config(**config_kwargs)

    # torchortho's constant buffers (Fourier's `grid` is a parameter there: its frequencies)
    act_cls = ACTIVATION_CLASSES.get(config.activation)
    reference_buffers = () if act_cls is None else act_cls._reference_buffers
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".attn.bias") and value.ndim == 4:
            continue  # nanoGPT's causal mask (non-flash path)
        if ".mlp.act." in key and key.rsplit(".", 1)[1] in reference_buffers:
            continue  # torchortho's constant buffers; the scheme they encode is in the config
        if key == "lm_head.weight" and tied:
            continue
        out[key] = value.t().contiguous() if _TRANSPOSED.search(key) else value
    # no-bias checkpoints: zero biases reproduce the bias-free Linear / LayerNorm
    inner = config.n_inner or 4 * n_embd
    zero_biases = {"ln_1.bias": n_embd, "ln_2.bias": n_embd, "attn.c_attn.bias": 3 * n_embd,
                   "attn.c_proj.bias": n_embd, "mlp.c_fc.bias": inner, "mlp.c_proj.bias": n_embd}
    dtype = state_dict["transformer.wte.weight"].dtype
    for i in range(n_layer):
        for name, size in zero_biases.items():
            out.setdefault(f"transformer.h.{i}.{name}", torch.zeros(size, dtype=dtype))
    out.setdefault("transformer.ln_f.bias", torch.zeros(n_embd, dtype=dtype))
    return config, out


def load_nanogpt_checkpoint(
        checkpoint: Union[str, os.PathLike, dict[str, Any]],
        **kwargs: Any,
) -> OrthoGPT2LMHeadModel:
    """nanoGPT `ckpt.pt` (`{'model': ..., 'model_args': ...}`) or a bare state dict → `OrthoGPT2LMHeadModel`.

    Loads strictly: every converted key must land and every model weight must be covered.
    """
    if not isinstance(checkpoint, dict):
        checkpoint = torch.load(checkpoint, map_location="cpu", weights_only=True)
    if "model" in checkpoint and isinstance(checkpoint["model"], dict):
        kwargs.setdefault("model_args", checkpoint.get("model_args"))
        state_dict = checkpoint["model"]
    else:
        state_dict = checkpoint
    config, converted = convert_nanogpt_state_dict(state_dict, **kwargs)
    model = OrthoGPT2LMHeadModel(config)
    missing, unexpected = model.load_state_dict(converted, strict=False)
    missing = [k for k in missing if not (k == "lm_head.weight" and config.tie_word_embeddings)]
    if missing or unexpected:
        raise ValueError(f"nanoGPT checkpoint does not match the converted model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model.eval()
