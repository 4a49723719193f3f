"""transformers classes: GPT-2 with learnable Hermite / Fourier / tropical MLP activations (`ortho_gpt2`).

Importing this package registers the classes with AutoConfig / AutoModel / AutoModelForCausalLM /
AutoModelForSequenceClassification, and marks them for remote code, so `save_pretrained` folders also load
with `trust_remote_code=True` where dcls_zoo is not installed.
"""
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
)

from .configuration_ortho_gpt2 import ORTHO_GPT2_PRESETS, OrthoGPT2Config
from .convert_nanogpt import convert_nanogpt_state_dict, load_nanogpt_checkpoint
from .modeling_ortho_gpt2 import (
    OrthoGPT2ForSequenceClassification,
    OrthoGPT2LMHeadModel,
    OrthoGPT2Model,
    OrthoGPT2PreTrainedModel,
)

__all__ = [
    "ORTHO_GPT2_PRESETS",
    "OrthoGPT2Config",
    "OrthoGPT2PreTrainedModel",
    "OrthoGPT2Model",
    "OrthoGPT2LMHeadModel",
    "OrthoGPT2ForSequenceClassification",
    "convert_nanogpt_state_dict",
    "load_nanogpt_checkpoint",
]

AutoConfig.register(OrthoGPT2Config.model_type, OrthoGPT2Config, exist_ok=True)
AutoModel.register(OrthoGPT2Config, OrthoGPT2Model, exist_ok=True)
AutoModelForCausalLM.register(OrthoGPT2Config, OrthoGPT2LMHeadModel, exist_ok=True)
AutoModelForSequenceClassification.register(OrthoGPT2Config, OrthoGPT2ForSequenceClassification, exist_ok=True)

OrthoGPT2Config.register_for_auto_class()
OrthoGPT2Model.register_for_auto_class("AutoModel")
OrthoGPT2LMHeadModel.register_for_auto_class("AutoModelForCausalLM")
OrthoGPT2ForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
