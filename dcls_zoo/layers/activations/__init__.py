"""Learnable Hermite, Fourier and tropical activations (Khalfaoui-Hassani, arXiv 2502.01247).

Each activation is one scalar function shared by every element of its input, with a handful of learnable
coefficients. Parameter names and shapes follow ``torchortho`` 0.1.2, so the authors' checkpoints load, but the
evaluation is different:

* every activation is a custom ``autograd.Function`` that saves only its input (and the few coefficients) and
  recomputes what backward needs, instead of materialising ``(..., degree)`` tensors (torchortho saves 2-23x
  the input for backward);
* Hermite is evaluated as a polynomial by Horner's rule: its coefficients in the Hermite basis are mapped to
  monomial coefficients with the three-term recurrence ``P_{k+1} = (x P_k - P_{k-1}) / (k + 1)`` applied to
  coefficient vectors (a ``(degree+1)^2`` constant), so the data only sees ``degree`` fused multiply-adds;
* tropical activations are convex piecewise-linear, so their upper envelope is computed once per call on the
  ``degree+1`` lines and each element is only compared with its few breakpoints;
* on CPU the functions walk the data in cache-sized pieces, so their elementwise passes stay in L2;
* by default (``compiled=None``) each activation runs as two ``torch.compile``'d kernels, one pass over the data
  each way, with float32 sine/cosine polynomials, wherever ``torch.compile`` works (checked once per device type
  at first use; otherwise one warning and the eager functions): needed for Fourier and TropicalRational to come
  near GELU's speed (`kernels.py`). ``compiled=False``, ``set_compiled_activations(False)`` or
  ``DCLS_ZOO_COMPILED_ACTIVATIONS=0`` selects the eager functions, ``=1`` / ``True`` forces the kernels;
* the output has the input's dtype (bf16 in, bf16 out); parameters keep their own dtype and get their
  gradients in it;
* the derivative is right everywhere, ``x = 0`` included (torchortho's Hermite drops the ``He_1`` term there
  because ``sign(0) = 0`` in its ``|x|^k sign(x)^k`` evaluation).

``scheme="default"`` is torchortho 0.1.2's normalisation and variance-preserving initialisation;
``scheme="legacy"`` is 0.1.0/0.1.1's (orthonormal Hermite basis ``He_k/sqrt(k!)``, Fourier without ``1/k!``,
tropical without the ``sqrt(2)/degree`` gain), which the paper's first version and the experiment repositories
used. The two are different functions of the same parameters: pick the one a checkpoint was trained with.

``act_init=`` fits the coefficients to a target activation (value and derivative) deterministically: Hermite by
linear least squares, the others by a fixed number of Adam steps on a fixed grid. Nothing is written anywhere
unless ``fit_cache_dir`` is given.

The package, by what each module holds:

* ``registry.py``: the activations by name (``ACTIVATION_CLASSES``; a new activation is one line there),
  ``DEFAULT_DEGREES``, ``create_activation``, ``activation_parameter_names``;
* ``modules.py``: the ``nn.Module`` classes, on one base class (forward dispatch, constant cache, init, torchortho
  state dicts);
* ``eager.py``: the eager autograd functions; ``kernels.py``: the compiled kernels and the compiled/eager switch;
* ``fitting.py``: ``fit_activation``.

These modules import only torch, the standard library and each other (sibling imports, one dot):
``dcls_zoo.lm`` copies them next to a saved GPT-2 variant's modeling file, so the folder loads with
``trust_remote_code=True`` without dcls_zoo installed.
"""
from .fitting import fit_activation
from .kernels import compiled_activations, set_compiled_activations
from .modules import (
    SCHEMES,
    FourierActivation,
    HermiteActivation,
    LearnableClamp,
    TropicalActivation,
    TropicalRationalActivation,
    hermite_to_monomial,
    reference_scheme,
)
from .registry import ACTIVATION_CLASSES, DEFAULT_DEGREES, activation_parameter_names, create_activation

__all__ = [
    "HermiteActivation",
    "FourierActivation",
    "TropicalActivation",
    "TropicalRationalActivation",
    "LearnableClamp",
    "ACTIVATION_CLASSES",
    "DEFAULT_DEGREES",
    "SCHEMES",
    "create_activation",
    "fit_activation",
    "activation_parameter_names",
    "hermite_to_monomial",
    "reference_scheme",
    "set_compiled_activations",
    "compiled_activations",
]
