"""The learnable activations, as seen from the GPT-2 modeling file.

Inside dcls_zoo this re-exports `dcls_zoo.layers.activations`. `OrthoGPT2PreTrainedModel.save_pretrained`
replaces the copy that transformers writes next to the modeling file with that implementation itself, so a saved
folder is self-contained for `trust_remote_code=True`. (The import is absolute on purpose: transformers follows
relative imports when it copies remote code.)
"""
from dcls_zoo.layers.activations import (  # noqa: F401
    ACTIVATION_CLASSES,
    DEFAULT_DEGREES,
    activation_parameter_names,
    create_activation,
)
