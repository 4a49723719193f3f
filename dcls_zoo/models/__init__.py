"""timm model families. Importing a family module registers its models with timm.

A family is one module here (its classes, `checkpoint_filter_fn`, `default_cfgs` and `@register_model` functions),
imported below. The `_*.py` modules are what several families share (`_builder.build_zoo_model` and
`zoo_checkpoint_filter`, timm bases, cited sources); a family never imports another family.
"""
from . import dcls_convnext  # noqa: F401
from . import dcls_metaformer  # noqa: F401
from . import kernel_sharing  # noqa: F401
from . import audio_convnext  # noqa: F401
from . import dcls_fastvit  # noqa: F401
from . import snn_delays  # noqa: F401
from . import dcls_audio  # noqa: F401
from . import dcls_resnet  # noqa: F401
from . import ortho_convnext  # noqa: F401
from . import pann  # noqa: F401
# family modules are added above this line, one import each
