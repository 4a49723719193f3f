"""The learnable activations, as seen from the GPT-2 configuration and modeling files.

Inside dcls_zoo this re-exports `dcls_zoo.layers.activations`. A saved folder holds, in its place, that package's
`registry.py` and the modules it imports (`OrthoGPT2PreTrainedModel.save_pretrained` copies them), so the folder is
self-contained for `trust_remote_code=True`. The import is absolute on purpose: transformers copies the files a
remote-code file imports relatively, from that file's own folder only.
"""
from dcls_zoo.layers.activations import (  # noqa: F401
    ACTIVATION_CLASSES,
    DEFAULT_DEGREES,
    SCHEMES,
    activation_parameter_names,
    create_activation,
)
