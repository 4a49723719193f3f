"""Building blocks with no knowledge of any model family."""
from .activations import (  # noqa: F401
    FourierActivation, HermiteActivation, TropicalActivation, TropicalRationalActivation, activation_parameter_names,
    compiled_activations, create_activation, fit_activation, set_compiled_activations,
)
from .audio import LogMelFrontend, SpecAugment  # noqa: F401
from .dcls import (  # noqa: F401
    DCLS_VERSIONS, Dcls1d, Dcls2d, Dcls3d, DclsModelMixin, DclsNd, clamp_dcls_parameters, construct_dcls_kernel,
    dcls_parameter_groups, dcls_position_parameter_names, enable_position_clamp,
)
from .dcls_conv import choose_weight_grad_path, dcls_conv, dcls_conv_paths  # noqa: F401
from .dcls_partial import Dcls2dK1d, Dcls3_1d  # noqa: F401
from .metrics import average_precision_per_class, mean_average_precision  # noqa: F401
from .replace import dclsify, default_stage_groups, freeze_dcls, is_depthwise_conv2d, tie_dcls_positions  # noqa: F401
from .sharing import (  # noqa: F401
    TiedParametersMixin, check_shared_copies_equal, expand_shared_entries, fold_shared_entries, share_kernels,
    shared_parameter_groups, tied_parameter_groups,
)
from .spiking import LIFNeuron, TimeSharedDropout  # noqa: F401
