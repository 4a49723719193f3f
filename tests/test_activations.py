"""Learnable Hermite / Fourier / tropical activations: parity with torchortho 0.1.2, gradients, moments, dtype."""
import copy
import importlib
import logging
import math
import os
import sys

import pytest
import torch
import torch.nn as nn

import torchortho
from third_party_paths import require_third_party

import dcls_zoo.layers.activations.eager as eager
import dcls_zoo.layers.activations.kernels as kernels
import dcls_zoo.layers.activations.modules as modules
from dcls_zoo.layers.activations import (
    FourierActivation,
    HermiteActivation,
    TropicalActivation,
    TropicalRationalActivation,
    activation_parameter_names,
    create_activation,
    fit_activation,
    hermite_to_monomial,
    set_compiled_activations,
)

PAIRS = [
    (torchortho.HermiteActivation, HermiteActivation, (1, 2, 3, 5, 8)),
    (torchortho.FourierActivation, FourierActivation, (1, 3, 5, 6)),
    (torchortho.TropicalActivation, TropicalActivation, (1, 3, 5, 12)),
    (torchortho.TropicalRationalActivation, TropicalRationalActivation, (1, 3, 6)),
]
CASES = [(ref, ours, n) for ref, ours, degrees in PAIRS for n in degrees]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (a relative error that does not blow up where b crosses zero)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _inputs(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * 2.5
    # torchortho's Hermite gradient is wrong at exactly 0 (sign(0) = 0); keep parity inputs away from it
    return torch.where(x.abs() < 1e-3, torch.full_like(x, 1e-3), x), torch.randn(n, generator=g)


def _run(module, x, upstream):
    module.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_()
    y = module(x)
    y.backward(upstream.to(y.dtype))
    return y.detach(), x.grad, {name: p.grad for name, p in module.named_parameters()}


def _compare(ref, ours, x, upstream):
    """Output and input gradient against torchortho (fp32); parameter gradients against torchortho evaluated
    in float64 (its fp32 parameter gradients are sums over every element and themselves drift from the exact
    value by up to ~5e-5 relative), and against torchortho fp32 within that drift."""
    ref.zero_grad(set_to_none=True)
    ref64 = copy.deepcopy(ref).double()
    y_ref, gx_ref, gp_ref = _run(ref, x, upstream)
    y_ours, gx_ours, gp_ours = _run(ours, x, upstream)
    _, _, gp_exact = _run(ref64, x.double(), upstream.double())
    assert _rel(y_ours, y_ref) <= 1e-5
    assert _rel(gx_ours, gx_ref) <= 1e-5
    assert sorted(gp_ours) == sorted(gp_ref)
    for name, exact in gp_exact.items():
        assert _rel(gp_ours[name].double(), exact) <= 1e-5, name
        ref_drift = _rel(gp_ref[name].double(), exact)
        assert _rel(gp_ours[name], gp_ref[name]) <= 1e-5 + ref_drift, name


@pytest.mark.parametrize("ref_cls,our_cls,degree", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_parity_with_torchortho_at_init(ref_cls, our_cls, degree):
    torch.manual_seed(degree)
    ref = ref_cls(degree)
    torch.manual_seed(degree)  # TropicalRational draws randn in the same order as torchortho
    ours = our_cls(degree)
    ref_state, our_state = ref.state_dict(), ours.state_dict()
    for name, value in our_state.items():
        assert value.shape == ref_state[name].shape and value.dtype == ref_state[name].dtype
        torch.testing.assert_close(value, ref_state[name], rtol=1e-6, atol=1e-7)
    _compare(ref, ours, *_inputs(seed=degree))


@pytest.mark.parametrize("ref_cls,our_cls,degree", CASES, ids=lambda v: getattr(v, "__name__", str(v)))
def test_parity_with_torchortho_random_parameters(ref_cls, our_cls, degree):
    ref, ours = ref_cls(degree), our_cls(degree)
    g = torch.Generator().manual_seed(100 + degree)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    # torchortho's own state dict (with its buffers) loads strictly into ours
    ours.load_state_dict(ref.state_dict())
    _compare(ref, ours, *_inputs(seed=200 + degree))


def test_parity_hermite_clamp():
    ref, ours = torchortho.HermiteActivation(3, clamp=True), HermiteActivation(3, clamp=True)
    with torch.no_grad():
        ref.clamp.lim_val.fill_(1.3)
    ours.load_state_dict(ref.state_dict())
    assert set(dict(ours.named_parameters())) == {"coefficients", "clamp.lim_val"}
    _compare(ref, ours, *_inputs(seed=7))


@pytest.mark.parametrize("cls,kwargs", [
    (HermiteActivation, dict(degree=4)), (HermiteActivation, dict(degree=3, clamp=True)),
    (HermiteActivation, dict(degree=3, scheme="legacy")), (FourierActivation, dict(degree=3)),
    (FourierActivation, dict(degree=2, scheme="legacy")), (TropicalActivation, dict(degree=4)),
    (TropicalRationalActivation, dict(degree=3)),
])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_gradcheck_float64(cls, kwargs, compiled):
    torch.manual_seed(0)
    act = cls(**kwargs, compiled=compiled).double()
    with torch.no_grad():  # perturb so no parameter sits at a symmetric point
        for p in act.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = (torch.randn(64, dtype=torch.float64) * 2).requires_grad_()
    params = tuple(act.parameters())
    names = [n for n, _ in act.named_parameters()]

    def fn(x, *values):
        return torch.func.functional_call(act, dict(zip(names, values)), (x,))

    if cls in (TropicalActivation, TropicalRationalActivation):
        # piecewise linear: keep x away from the kinks so finite differences stay on one piece
        x = x.detach()
        for _ in range(20):
            eps = 1e-4
            if torch.allclose((fn(x + eps, *params) - fn(x - eps, *params)) / (2 * eps),
                              (fn(x + eps / 2, *params) - fn(x - eps / 2, *params)) / eps, atol=1e-6):
                break
            x = x + 0.01
        x.requires_grad_()
    assert torch.autograd.gradcheck(fn, (x, *[p.detach().requires_grad_() for p in params]), eps=1e-6, atol=1e-6)


def test_hermite_matches_probabilists_hermite_everywhere_including_zero():
    """Independent formula (torch.special), both bases; our gradient at x = 0 is the true derivative."""
    n = 5
    x = torch.cat([torch.zeros(1), torch.linspace(-3, 3, 61)]).double().requires_grad_()
    for scheme, norm in (("default", lambda k: math.factorial(k)), ("legacy", lambda k: math.sqrt(math.factorial(k)))):
        act = HermiteActivation(n, scheme=scheme).double()
        a = act.coefficients.detach()
        he = [torch.special.hermite_polynomial_he(x.detach(), k) for k in range(n + 1)]
        expected = sum(a[k] * he[k] / norm(k) for k in range(n + 1))
        expected_grad = sum(a[k] * k * he[k - 1] / norm(k) for k in range(1, n + 1))  # He_k' = k He_{k-1}
        y = act(x)
        (grad,) = torch.autograd.grad(y.sum(), x)
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(grad, expected_grad)
    # the reference returns a wrong derivative at exactly 0 (it drops the He_1 term); ours is a_1 - a_3/2 + ...
    act = HermiteActivation(3)
    zero = torch.zeros(1, requires_grad=True)
    act(zero).sum().backward()
    a = act.coefficients.detach()
    torch.testing.assert_close(zero.grad, (a[1] - a[3] / 2).reshape(1))
    ref_zero = torch.zeros(1, requires_grad=True)
    torchortho.HermiteActivation(3)(ref_zero).sum().backward()
    assert ref_zero.grad.item() == 0.0 and zero.grad.item() > 0.3


def test_hermite_to_monomial_rows():
    # He_3 / 3! = (x^3 - 3x) / 6 and He_4 / 4! = (x^4 - 6x^2 + 3) / 24
    rows = hermite_to_monomial(4)
    assert rows[3] == pytest.approx([0, -0.5, 0, 1 / 6, 0])
    assert rows[4] == pytest.approx([3 / 24, 0, -6 / 24, 0, 1 / 24])
    legacy = hermite_to_monomial(2, "legacy")
    assert legacy[2] == pytest.approx([-1 / math.sqrt(2), 0, 1 / math.sqrt(2)])


def _moments(act, samples=1 << 20):
    x = torch.randn(samples, generator=torch.Generator().manual_seed(0), dtype=torch.float64).requires_grad_()
    y = act.double()(x)
    (dy,) = torch.autograd.grad(y.sum(), x)
    return y.detach().pow(2).mean().item(), y.detach().var().item(), dy.pow(2).mean().item()


@pytest.mark.parametrize("degree", [2, 3, 5])
def test_hermite_variance_preserving_init(degree):
    """E[y^2] = E[y'^2] = e^-1 sum_{k<n} 1/k! for x ~ N(0, 1) (paper's claim; 0.92 for n = 3)."""
    expected = math.exp(-1) * sum(1 / math.factorial(k) for k in range(degree))
    second, _, grad_second = _moments(HermiteActivation(degree))
    assert second == pytest.approx(expected, rel=0.02)
    assert grad_second == pytest.approx(expected, rel=0.02)


def test_fourier_and_tropical_init_moments():
    # documented values (activations.md section 4)
    second, _, grad_second = _moments(FourierActivation(5))
    assert second == pytest.approx(1.31, abs=0.01) and grad_second == pytest.approx(0.96, abs=0.01)
    for n in (1, 3, 5, 12):
        _, var, grad_second = _moments(TropicalActivation(n))
        # y = sqrt(2) ReLU(x) + sqrt(2)/n exactly: Var = 2 Var(ReLU) = 1 - 1/pi, E[y'^2] = 1
        assert var == pytest.approx(1 - 1 / math.pi, rel=0.01) and grad_second == pytest.approx(1.0, rel=0.01)
    x = torch.linspace(-3, 3, 101)
    torch.testing.assert_close(TropicalActivation(5)(x), math.sqrt(2) * torch.relu(x) + math.sqrt(2) / 5)


def test_legacy_scheme_init_and_form():
    act = HermiteActivation(3, scheme="legacy")
    gain = math.sqrt(6) / math.pi
    torch.testing.assert_close(act.coefficients.double(), torch.tensor(
        [0.66549 * gain, gain, gain / 2 ** 1.5, gain / 3 ** 1.5], dtype=torch.float64), rtol=1e-6, atol=0)
    four = FourierActivation(2, scheme="legacy")
    torch.testing.assert_close(four.grid.double(), torch.tensor([1, 2], dtype=torch.float64) * math.pi / math.sqrt(3),
                               rtol=1e-6, atol=0)
    x = torch.linspace(-2, 2, 9, dtype=torch.float64)
    four = four.double()
    expected = four.fundamental + sum(four.coefficients[k] * torch.cos(four.grid[k] * x - four.phases[k])
                                      for k in range(2))
    torch.testing.assert_close(four(x), expected.detach())
    trop = TropicalActivation(4, scheme="legacy")
    torch.testing.assert_close(trop(torch.linspace(-2, 2, 9)), 1 + 4 * torch.relu(torch.linspace(-2, 2, 9)))
    # legacy Hermite: orthonormal basis, so E[y^2] = sum a_k^2 and E[y'^2] = sum k a_k^2
    second, _, grad_second = _moments(act)
    a = act.coefficients.double()
    assert second == pytest.approx((a ** 2).sum().item(), rel=0.02)
    assert grad_second == pytest.approx((torch.arange(4) * a ** 2).sum().item(), rel=0.02)


def test_loading_a_checkpoint_of_the_other_scheme_is_refused():
    with pytest.raises(ValueError, match="scheme='default'"):
        HermiteActivation(3, scheme="legacy").load_state_dict(torchortho.HermiteActivation(3).state_dict())
    with pytest.raises(ValueError, match="scheme='default'"):
        FourierActivation(3, scheme="legacy").load_state_dict(torchortho.FourierActivation(3).state_dict())


@pytest.mark.parametrize("cls", [HermiteActivation, FourierActivation, TropicalActivation,
                                 TropicalRationalActivation])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dtype_preserved(cls, dtype):
    act = cls(3)
    x = torch.randn(2, 7, 16, dtype=dtype, requires_grad=True)
    y = act(x)
    assert y.dtype == dtype and y.shape == x.shape
    y.float().sum().backward()
    assert x.grad.dtype == dtype
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in act.parameters())
    # same function as in fp32, to the input precision
    torch.testing.assert_close(y.float(), act(x.detach().float()), rtol=0.05, atol=0.05)


@pytest.mark.parametrize("cls", [HermiteActivation, FourierActivation, TropicalActivation,
                                 TropicalRationalActivation])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_saves_only_the_input_for_backward(cls, compiled):
    act = cls(5, compiled=compiled)
    x = torch.randn(64, 128, requires_grad=True)
    saved = {}

    def pack(t):
        if t.numel() > 1000:
            saved[t.untyped_storage().data_ptr()] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        act(x).sum().backward()
    assert sum(saved.values()) == x.numel() * x.element_size()


def test_meta_device_and_factory_kwargs():
    for cls in (HermiteActivation, FourierActivation, TropicalActivation, TropicalRationalActivation):
        act = cls(3, device="meta", dtype=torch.bfloat16)
        assert all(p.is_meta and p.dtype == torch.bfloat16 for p in act.parameters())
        y = act(torch.empty(2, 3, device="meta", dtype=torch.bfloat16))
        assert y.is_meta and y.shape == (2, 3) and y.dtype == torch.bfloat16


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="degree must be an integer >= 1"):
        HermiteActivation(0)
    with pytest.raises(ValueError, match="scheme must be one of"):
        FourierActivation(3, scheme="0.1.1")
    with pytest.raises(ValueError, match="unknown learnable activation"):
        create_activation("rational")
    with pytest.raises(TypeError, match="floating-point tensor"):
        TropicalActivation(3)(torch.arange(4))
    with pytest.raises(TypeError, match=r"^fit_activation expects a learnable activation \(one of "
                                        r"ACTIVATION_CLASSES\), got Linear$"):
        fit_activation(nn.Linear(2, 2), nn.GELU())


def test_fit_to_gelu_is_deterministic_and_writes_nothing(tmp_path):
    import dcls_zoo.layers as layers_pkg

    package_dir = os.path.dirname(layers_pkg.__file__)
    before = sorted(os.listdir(package_dir))
    gelu = nn.GELU()
    a = HermiteActivation(3, act_init=gelu)
    b = HermiteActivation(3, act_init=gelu)
    torch.testing.assert_close(a.coefficients, b.coefficients, rtol=0, atol=0)
    # least squares on value + derivative (independent solve with torch.special): same coefficients
    x = torch.linspace(-math.sqrt(3), math.sqrt(3), 512, dtype=torch.float64).requires_grad_()
    target = gelu(x)
    (dtarget,) = torch.autograd.grad(target.sum(), x)
    x = x.detach()
    value = torch.stack([torch.special.hermite_polynomial_he(x, k) / math.factorial(k) for k in range(4)], 1)
    deriv = torch.cat([torch.zeros(512, 1, dtype=torch.float64), value[:, :3]], 1)  # (He_k/k!)' = He_{k-1}/(k-1)!
    solution = torch.linalg.lstsq(torch.cat([value, deriv]), torch.cat([target, dtarget]).detach().unsqueeze(1))
    torch.testing.assert_close(a.coefficients.double(), solution.solution.squeeze(1), rtol=1e-5, atol=1e-6)
    # a better fit than torchortho's (loss_min 0.0172 with its wrong derivative target)
    loss = fit_activation(HermiteActivation(3), gelu)
    assert loss < 0.0172

    f1, f2 = FourierActivation(3), FourierActivation(3)
    loss_1, loss_2 = fit_activation(f1, gelu, steps=300), fit_activation(f2, gelu, steps=300)
    assert loss_1 == loss_2 and loss_1 < 0.0112  # below the least-squares start (0.01124)
    for p, q in zip(f1.parameters(), f2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    grid = torch.linspace(-3, 3, 101)
    assert (f1(grid) - gelu(grid)).abs().max() < 0.1
    torch.manual_seed(0)
    tr = TropicalRationalActivation(4)
    fit_activation(tr, gelu, steps=500)
    assert (tr(grid) - gelu(grid)).abs().max() < 0.25
    assert sorted(os.listdir(package_dir)) == before

    # an explicit cache directory is used, and reloading from it gives the same values
    cache = tmp_path / "fits"
    c1, c2 = FourierActivation(3), FourierActivation(3)
    assert fit_activation(c1, gelu, steps=20, cache_dir=str(cache)) == fit_activation(c2, gelu, steps=20,
                                                                                      cache_dir=str(cache))
    assert len(os.listdir(cache)) == 1
    for p, q in zip(c1.parameters(), c2.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_activation_parameter_names_and_factory():
    model = nn.Sequential(nn.Linear(4, 8), create_activation("fourier"), nn.Linear(8, 4),
                          create_activation("hermite", clamp=True))
    assert model[1].degree == 5 and model[3].degree == 3
    assert activation_parameter_names(model) == {"1.fundamental", "1.phases", "1.coefficients", "1.grid",
                                                  "3.coefficients", "3.clamp.lim_val"}


def test_tensor_scalar_path_used_off_cpu_matches(monkeypatch):
    """Off CPU the coefficients stay 0-dim device tensors (no host sync); run that path here and compare."""
    monkeypatch.setattr(eager, "_scalars", lambda values, like: list(values.to(like.dtype).unbind(0)))
    for ref_cls, our_cls, degree in [(torchortho.HermiteActivation, HermiteActivation, 3),
                                     (torchortho.FourierActivation, FourierActivation, 5),
                                     (torchortho.TropicalActivation, TropicalActivation, 5)]:
        ref, ours = ref_cls(degree), our_cls(degree)
        ours.load_state_dict(ref.state_dict())
        _compare(ref, ours, *_inputs(seed=degree))
    assert HermiteActivation(3, clamp=True)(torch.randn(5, dtype=torch.bfloat16)).dtype == torch.bfloat16


@pytest.fixture(scope="module")
def torchortho_legacy():
    """torchortho 0.1.1 (the legacy scheme's origin), fetched before pytest and imported on the side."""
    root = str(require_third_party("torchortho-0.1.1"))  # not fetched: fails the test, naming the fetch command
    installed = {k: sys.modules.pop(k) for k in list(sys.modules) if k.split(".")[0] == "torchortho"}
    sys.path.insert(0, root)
    try:
        legacy = importlib.import_module("torchortho")
        assert legacy.__file__.startswith(root)
    finally:
        sys.path.remove(root)
        for k in [k for k in sys.modules if k.split(".")[0] == "torchortho"]:
            del sys.modules[k]
        sys.modules.update(installed)
    return legacy


@pytest.mark.parametrize("name,degree", [("HermiteActivation", 3), ("HermiteActivation", 6), ("FourierActivation", 5),
                                         ("TropicalActivation", 5)])
def test_legacy_scheme_parity_with_torchortho_0_1_1(torchortho_legacy, name, degree):
    ref = getattr(torchortho_legacy, name)(degree)
    ours = {"HermiteActivation": HermiteActivation, "FourierActivation": FourierActivation,
            "TropicalActivation": TropicalActivation}[name](degree, scheme="legacy")
    for key, value in ours.state_dict().items():  # same init
        torch.testing.assert_close(value, ref.state_dict()[key], rtol=1e-6, atol=1e-7)
    _compare(ref, ours, *_inputs(seed=degree))
    g = torch.Generator().manual_seed(degree)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    ours.load_state_dict(ref.state_dict())  # 0.1.1 state dicts (its buffers included) load into scheme="legacy"
    _compare(ref, ours, *_inputs(seed=10 + degree))


# ----------------------------------------------------------------------------------------------------------------
# compiled=True: the torch.compile'd kernels
# ----------------------------------------------------------------------------------------------------------------

COMPILED_CASES = [
    (torchortho.HermiteActivation, HermiteActivation, dict(degree=3)),
    (torchortho.HermiteActivation, HermiteActivation, dict(degree=3, clamp=True)),
    (torchortho.FourierActivation, FourierActivation, dict(degree=5)),
    (torchortho.TropicalActivation, TropicalActivation, dict(degree=5)),
    (torchortho.TropicalRationalActivation, TropicalRationalActivation, dict(degree=6)),
]


@pytest.mark.parametrize("ref_cls,our_cls,kwargs", COMPILED_CASES,
                         ids=lambda v: getattr(v, "__name__", None) or "-".join(f"{k}{w}" for k, w in v.items()))
@pytest.mark.parametrize("random_parameters", [False, True], ids=["init", "random"])
def test_compiled_parity_with_torchortho(ref_cls, our_cls, kwargs, random_parameters):
    torch.manual_seed(11)
    ref = ref_cls(**kwargs)
    if random_parameters:
        g = torch.Generator().manual_seed(12)
        with torch.no_grad():
            for p in ref.parameters():  # (the clamp limit, 0-dim, stays positive: 1 +- 0.5)
                scale, shift = (0.5, 1.0) if p.dim() == 0 else (1.0, 0.0)
                p.copy_(torch.randn(p.shape, generator=g) * scale + shift)
    ours = our_cls(**kwargs, compiled=True)
    ours.load_state_dict(ref.state_dict())
    x, upstream = _inputs(seed=13)
    _compare(ref, ours, x.view(8, 512), upstream.view(8, 512))


@pytest.mark.parametrize("shape", [(3, 5, 7), (), (2, 3, 4096), (0, 5)], ids=str)
def test_compiled_matches_eager_on_any_shape(shape):
    """Rows of gcd(numel, 4096) columns, or of the last dimension when that is too short; empty tensors skip the
    kernels."""
    torch.manual_seed(0)
    eager, compiled = FourierActivation(5, compiled=False), FourierActivation(5, compiled=True)
    compiled.load_state_dict(eager.state_dict())
    x, upstream = torch.randn(shape) * 2, torch.randn(shape)
    y_eager, gx_eager, gp_eager = _run(eager, x, upstream)
    y_compiled, gx_compiled, gp_compiled = _run(compiled, x, upstream)
    assert y_compiled.shape == shape and gx_compiled.shape == shape
    torch.testing.assert_close(y_compiled, y_eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gx_compiled, gx_eager, rtol=1e-5, atol=1e-5)
    for name, value in gp_eager.items():
        torch.testing.assert_close(gp_compiled[name], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_any_memory_layout_gives_the_same_values(compiled):
    """Channels-last and strided inputs (the eager functions work on flat views in memory order)."""
    torch.manual_seed(0)
    base = torch.randn(2, 8, 5, 6) * 2
    upstream = torch.randn(2, 8, 5, 6)
    layouts = {"channels_last": base.contiguous(memory_format=torch.channels_last),
               "transposed": base.transpose(1, 3).contiguous().transpose(1, 3),
               "strided": torch.stack([base, base], -1)[..., 0]}
    for act in (HermiteActivation(3, clamp=True, compiled=compiled), FourierActivation(3, compiled=compiled),
                TropicalRationalActivation(3, compiled=compiled)):
        y_ref, gx_ref, gp_ref = _run(act, base, upstream)
        for name, x in layouts.items():
            assert x.shape == base.shape and not x.is_contiguous()
            y, gx, gp = _run(act, x, upstream)
            torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-6, msg=name)
            torch.testing.assert_close(gx, gx_ref, rtol=1e-6, atol=1e-6, msg=name)
            for key, value in gp_ref.items():
                torch.testing.assert_close(gp[key], value, rtol=1e-5, atol=1e-6, msg=name)
            if name == "channels_last":  # kept, without copies
                assert y.is_contiguous(memory_format=torch.channels_last)
                assert gx.is_contiguous(memory_format=torch.channels_last)


def test_compiled_kernels_are_reused_for_other_batch_sizes():
    from torch._dynamo.utils import counters

    act = FourierActivation(5, compiled=True)
    act(torch.randn(4, 4096, requires_grad=True)).sum().backward()
    graphs = counters["stats"]["unique_graphs"]
    for rows in (7, 2, 300):  # (a single row is specialised by torch.compile and gets kernels of its own)
        act(torch.randn(rows, 4096, requires_grad=True)).sum().backward()
    assert counters["stats"]["unique_graphs"] == graphs


@pytest.mark.parametrize("cls", [HermiteActivation, FourierActivation, TropicalActivation,
                                 TropicalRationalActivation])
def test_compiled_dtype_preserved(cls):
    torch.manual_seed(0)
    act = cls(3, compiled=True)
    x = torch.randn(4, 1024, dtype=torch.bfloat16, requires_grad=True)
    y = act(x)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in act.parameters())
    # computed in float32 and rounded once: within bf16's resolution of the float32 result
    torch.testing.assert_close(y.float(), act(x.detach().float()), rtol=2 ** -7, atol=2 ** -7)


def test_compiled_tropical_ties_follow_the_eager_rule():
    """At init every line of a tropical activation meets at x = 0; both paths credit line 0 there."""
    x = torch.tensor([0.0, 0.0, -1.0, 2.0, 0.0] * 200)
    upstream = torch.linspace(-1, 1, x.numel())
    eager, compiled = TropicalActivation(5, compiled=False), TropicalActivation(5, compiled=True)
    y_e, gx_e, gp_e = _run(eager, x, upstream)
    y_c, gx_c, gp_c = _run(compiled, x, upstream)
    torch.testing.assert_close(y_c, y_e, rtol=0, atol=1e-6)
    torch.testing.assert_close(gx_c, gx_e, rtol=0, atol=1e-6)
    torch.testing.assert_close(gp_c["coefficients"], gp_e["coefficients"], rtol=1e-6, atol=1e-6)
    assert gp_c["coefficients"][1:-1].abs().max() == 0  # interior lines are never on the envelope at init


def test_fast_sin_cos_polynomials_are_float32_accurate():
    """The compiled kernels' float32 sine/cosine (range reduction in turns + polynomials) against float64."""
    turns = torch.cat([torch.linspace(-1000, 1000, 400_001), torch.linspace(-1, 1, 100_001),
                       torch.tensor([0.0, 0.25, 0.5, -0.25, -0.5, 0.125, 1e-8])])
    cos, sin = kernels._cos_sin_turns(turns, exact=False)
    theta = turns.double() * (2 * math.pi)  # the same float32 argument, evaluated exactly
    # within 2.5 float32 ulps of 1 (polynomial error < 5e-8 plus Horner's rounding in float32, no FMA here)
    assert (cos.double() - theta.cos()).abs().max() < 3e-7
    assert (sin.double() - theta.sin()).abs().max() < 3e-7


def test_compiled_switch_and_argument_errors(monkeypatch):
    monkeypatch.setattr(kernels, "_compiled_default", None)
    monkeypatch.delenv("DCLS_ZOO_COMPILED_ACTIVATIONS", raising=False)
    calls = []
    real = modules._compiled
    monkeypatch.setattr(modules, "_compiled", lambda kind, *a: calls.append(kind) or real(kind, *a))
    monkeypatch.setattr(kernels, "_compiler_works", {"cpu": False})  # as where torch.compile fails
    x = torch.randn(4, 256)
    act = HermiteActivation(3)
    act(x)
    assert calls == [] and not kernels.compiled_activations()
    monkeypatch.setattr(kernels, "_compiler_works", {"cpu": True})  # the default where it works
    act(x)
    assert calls == [kernels._CompiledPolynomial] and kernels.compiled_activations()
    calls.clear()
    monkeypatch.setenv("DCLS_ZOO_COMPILED_ACTIVATIONS", "0")
    act(x)
    assert calls == [] and not kernels.compiled_activations()
    monkeypatch.setattr(kernels, "_compiler_works", {"cpu": False})
    monkeypatch.setenv("DCLS_ZOO_COMPILED_ACTIVATIONS", "1")  # forced even where the check failed
    act(x)
    assert calls == [kernels._CompiledPolynomial]
    set_compiled_activations(False)  # the call wins over the environment
    act(x)
    HermiteActivation(3, compiled=True)(x)  # and the argument over both
    assert len(calls) == 2
    set_compiled_activations(True)
    HermiteActivation(3, compiled=False)(x)
    assert len(calls) == 2
    monkeypatch.setattr(kernels, "_compiled_default", None)
    monkeypatch.setenv("DCLS_ZOO_COMPILED_ACTIVATIONS", "sometimes")
    with pytest.raises(ValueError, match="DCLS_ZOO_COMPILED_ACTIVATIONS must be 1 or 0, got 'sometimes'"):
        act(x)
    with pytest.raises(TypeError, match="compiled must be True, False or None"):
        FourierActivation(3, compiled="yes")
    with pytest.raises(TypeError, match="set_compiled_activations expects True or False"):
        set_compiled_activations(1)


def test_compiled_without_a_working_compiler_says_what_to_do(tmp_path):
    """A failed kernel build is one RuntimeError naming the way back to the eager functions (fresh process and
    Inductor cache, so nothing compiled earlier is reused)."""
    import subprocess

    code = (
        "import torch, torch._inductor.config as c\n"
        "c.cpp.cxx = ('/nonexistent/g++',)\n"
        "from dcls_zoo.layers.activations import FourierActivation\n"
        "try:\n"
        "    FourierActivation(5, compiled=True)(torch.randn(3, 64))\n"
        "except RuntimeError as e:\n"
        "    print('MESSAGE', str(e).splitlines()[0])\n"
    )
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("MESSAGE")]
    assert line, out.stdout + out.stderr
    assert "compiled activation kernel could not be built" in line[0] and "compiled=False" in line[0]


def test_eager_pieces_match_one_piece(monkeypatch):
    """On CPU the eager functions walk the data in pieces (2^18 elements); pieces of 777 elements (the last one
    short) must give what one piece gives, with parity to torchortho kept."""
    x, upstream = _inputs(n=5000, seed=21)
    x, upstream = x.view(5, 1000), upstream.view(5, 1000)
    for ref_cls, our_cls, kwargs in COMPILED_CASES:
        torch.manual_seed(22)
        ref = ref_cls(**kwargs)
        ours = our_cls(**kwargs, compiled=False)
        ours.load_state_dict(ref.state_dict())
        monkeypatch.setattr(eager, "_CPU_PIECE", 1 << 18)
        whole = _run(ours, x, upstream)
        monkeypatch.setattr(eager, "_CPU_PIECE", 777)
        assert len(eager._pieces(x)) == 7
        pieces = _run(ours, x, upstream)
        torch.testing.assert_close(pieces[0], whole[0], rtol=0, atol=0)
        torch.testing.assert_close(pieces[1], whole[1], rtol=0, atol=0)
        for name, value in whole[2].items():
            torch.testing.assert_close(pieces[2][name], value, rtol=1e-5, atol=1e-6)  # float32 block sums
        _compare(ref, ours, x, upstream)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_inside_a_torch_compiled_model(compiled):
    """torch.compile on a whole model: the compiled kernels are traced into its graph (no nested compile), the
    eager functions and the tropical envelope (a host sync) run between graph pieces; same values either way."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), FourierActivation(5, compiled=compiled), nn.Linear(64, 64),
                          TropicalRationalActivation(4, compiled=compiled), nn.Linear(64, 4))
    x = torch.randn(32, 16)

    def step(run):
        model.zero_grad(set_to_none=True)
        loss = run(x).square().mean()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_eager, grads_eager = step(model)
    loss_compiled, grads_compiled = step(torch.compile(model))
    torch.testing.assert_close(loss_compiled, loss_eager, rtol=1e-5, atol=1e-6)
    for name, value in grads_eager.items():
        torch.testing.assert_close(grads_compiled[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_default_checks_torch_compile_once_and_falls_back_to_eager_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(kernels, "_compiled_default", None)
    monkeypatch.delenv("DCLS_ZOO_COMPILED_ACTIVATIONS", raising=False)
    monkeypatch.setattr(kernels, "_compiler_works", {})
    attempts = []

    def broken_compile(*args, **kwargs):
        attempts.append(args)
        raise RuntimeError("InductorError: no C++ compiler found\nmore detail")

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager = FourierActivation(3, compiled=False)
    act = FourierActivation(3)
    act.load_state_dict(eager.state_dict())
    x = torch.randn(3, 64)
    with caplog.at_level(logging.WARNING, logger=kernels.__name__):
        y = act(x)
        act(x)
        TropicalRationalActivation(3)(x)
    assert torch.equal(y, eager(x))
    assert len(attempts) == 1, "the check runs once per device type"
    assert [r.getMessage() for r in caplog.records] == [
        "dcls_zoo activations: torch.compile does not work on cpu (InductorError: no C++ compiler found); using "
        "the eager functions (set DCLS_ZOO_COMPILED_ACTIVATIONS=0 to skip this check)"]
    assert kernels._compiler_works == {"cpu": False}
    # a device type without torch.compile support is never probed
    assert not kernels._torch_compile_works("mps") and len(attempts) == 1


def test_default_is_eager_under_jit_trace(monkeypatch):
    monkeypatch.setattr(kernels, "_compiled_default", None)
    monkeypatch.delenv("DCLS_ZOO_COMPILED_ACTIVATIONS", raising=False)
    monkeypatch.setattr(kernels, "_compiler_works", {"cpu": True})
    calls = []
    real = modules._compiled
    monkeypatch.setattr(modules, "_compiled", lambda kind, *a: calls.append(kind) or real(kind, *a))
    act = FourierActivation(3)
    x = torch.randn(2, 32)
    traced = torch.jit.trace(act, x, check_trace=False)
    assert calls == []
    eager = FourierActivation(3, compiled=False)
    eager.load_state_dict(act.state_dict())
    torch.testing.assert_close(traced(x), eager(x))


def test_fourier_degree_range():
    FourierActivation(33)
    FourierActivation(60, scheme="legacy")  # no 1/k! scale there
    with pytest.raises(ValueError, match=r"^FourierActivation: degree must be <= 33 with scheme='default', got 100: "
                                         r"term k is scaled by 1/k!, below float32's smallest normal number from "
                                         r"k = 34 on \(use scheme='legacy' for more terms\)$"):
        FourierActivation(degree=100)
