"""Configuration of GPT-2 with a learnable Hermite / Fourier / tropical MLP activation (arXiv 2502.01247).

Remote code: `save_pretrained` copies this file and `ortho_activations.py` (with what it imports) next to the
weights, so that the folder loads with `trust_remote_code=True` where dcls_zoo is not installed.
"""
from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.models.gpt2.configuration_gpt2 import GPT2Config

from .ortho_activations import DEFAULT_DEGREES, SCHEMES

__all__ = ["OrthoGPT2Config", "ORTHO_GPT2_PRESETS"]

# activation -> default degree (the activations' registry; the paper's GPT-2 used Hermite 3 and Fourier 5); "gelu"
# keeps GPT-2's own `activation_function`
ACTIVATION_DEFAULT_DEGREES = {**DEFAULT_DEGREES, "gelu": None}
ACTIVATION_SCHEMES = SCHEMES

# GPT-2 124M as trained by the authors (nanoGPT): padded vocabulary, no dropout, exact GELU for the baseline.
_GPT2_124M = dict(vocab_size=50304, n_positions=1024, n_embd=768, n_layer=12, n_head=12, resid_pdrop=0.0,
                  embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu")
ORTHO_GPT2_PRESETS = {
    "gpt2-124m-hermite3": dict(_GPT2_124M, activation="hermite", activation_degree=3),
    "gpt2-124m-fourier5": dict(_GPT2_124M, activation="fourier", activation_degree=5),
}


@strict
class OrthoGPT2Config(GPT2Config):
    r"""
    activation (`str`, *optional*, defaults to `"hermite"`):
        MLP activation: `"hermite"`, `"fourier"`, `"tropical"`, `"tropical_rational"` (learnable, one coefficient
        set per block) or `"gelu"` (GPT-2's own `activation_function`, for baselines).
    activation_degree (`int`, *optional*):
        Degree of the learnable activation; if unset, the model fills in the activation's default degree
        (`dcls_zoo.layers.activations.DEFAULT_DEGREES`: 3 for hermite) when it is built.
    activation_scheme (`str`, *optional*, defaults to `"default"`):
        `"default"`: torchortho 0.1.2's normalisation and variance-preserving init; `"legacy"`: 0.1.0/0.1.1's.
    """

    model_type = "ortho_gpt2"

    activation: str = "hermite"
    activation_degree: int | None = None
    activation_scheme: str = "default"

    def __post_init__(self, **kwargs):
        # checked here rather than in a `validate_*` hook so that bad values raise a plain ValueError
        if self.activation not in ACTIVATION_DEFAULT_DEGREES:
            raise ValueError(f"activation must be one of {sorted(ACTIVATION_DEFAULT_DEGREES)}, "
                             f"got {self.activation!r}")
        # None means the activation's default degree, resolved when a model is built (so that
        # `from_pretrained(gpt2_folder, activation="fourier")` gets Fourier's default, not Hermite's)
        if self.activation_degree is not None and (isinstance(self.activation_degree, bool)
                                                   or not isinstance(self.activation_degree, int)
                                                   or self.activation_degree < 1):
            raise ValueError(f"activation_degree must be an integer >= 1, got {self.activation_degree!r}")
        if self.activation_scheme not in ACTIVATION_SCHEMES:
            raise ValueError(f"activation_scheme must be one of {ACTIVATION_SCHEMES}, got {self.activation_scheme!r}")
        super().__post_init__(**kwargs)

    def resolved_activation_degree(self) -> int | None:
        if self.activation_degree is None:
            return ACTIVATION_DEFAULT_DEGREES[self.activation]
        return self.activation_degree

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "OrthoGPT2Config":
        """The paper's configurations: `"gpt2-124m-hermite3"`, `"gpt2-124m-fourier5"`."""
        if name not in ORTHO_GPT2_PRESETS:
            raise ValueError(f"unknown OrthoGPT2 preset {name!r}; expected one of {sorted(ORTHO_GPT2_PRESETS)}")
        return cls(**dict(ORTHO_GPT2_PRESETS[name], **overrides))
