"""`Dcls3_1d` / `Dcls2dK1d` (positions on some axes only) against the authors' `dcls` 0.1.1 (test-only oracle)."""
import copy
import io
import logging

import DCLS.construct.modules as ref_modules
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from dcls_zoo.layers import (
    Dcls2d, Dcls2dK1d, Dcls3_1d, LIFNeuron, clamp_dcls_parameters, dcls_position_parameter_names, freeze_dcls,
)

logging.getLogger().setLevel(logging.ERROR)  # the oracle logs implicit-GEMM warnings on every construction

# (in, out, groups, kernel_count)
GROUPINGS = {"depthwise": (6, 6, 6, 3), "dense": (4, 6, 1, 3), "grouped": (4, 6, 2, 2)}
TOLERANCES = [(torch.float32, 1e-5), (torch.float64, 1e-12)]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _spread_positions(ref, lim):
    with torch.no_grad():  # over (and slightly past) the whole grid, as after training
        ref.P.uniform_(-lim - 0.5, lim + 0.5)
        if ref.SIG is not None:
            ref.SIG.uniform_(-0.6, 0.6)


def _compare(ref, ours, x, tol):
    ours.load_state_dict(ref.state_dict())
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    assert y_ours.shape == y_ref.shape and y_ours.dtype == x.dtype
    assert _rel(y_ours, y_ref) <= tol
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_ours.backward(grad)
    assert _rel(x_ours.grad, x_ref.grad) <= tol, "input gradient"
    for name in ("weight", "P", "SIG", "bias"):
        if getattr(ref, name) is None:
            assert getattr(ours, name) is None
            continue
        assert _rel(getattr(ours, name).grad, getattr(ref, name).grad) <= tol, f"{name} gradient"


@pytest.mark.parametrize("dtype,tol", TOLERANCES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("version", ["v1", "gauss", "max"])
def test_dcls3_1d_outputs_and_gradients_match_reference(version, grouping, dtype, tol):
    cin, cout, groups, count = GROUPINGS[grouping]
    kw = dict(kernel_count=count, stride=(1, 2, 1), padding=(1, 0, 3), dense_kernel_size=(3, 2),
              dilated_kernel_size=7, groups=groups, version=version)
    torch.manual_seed(0)
    ref = ref_modules.Dcls3_1d(cin, cout, **kw).to(dtype)
    _spread_positions(ref, 3)
    ours = Dcls3_1d(cin, cout, **kw).to(dtype)
    _compare(ref, ours, torch.randn(2, cin, 5, 6, 9, dtype=dtype), tol)


@pytest.mark.parametrize("dtype,tol", TOLERANCES, ids=["fp32", "fp64"])
@pytest.mark.parametrize("flat_dim", [0, 1])
@pytest.mark.parametrize("grouping", list(GROUPINGS))
@pytest.mark.parametrize("version", ["v0", "v1", "gauss", "max"])
def test_dcls2dk1d_outputs_and_gradients_match_reference(version, grouping, flat_dim, dtype, tol):
    cin, cout, groups, count = GROUPINGS[grouping]
    padding = (3, 1) if flat_dim == 0 else (1, 3)
    kw = dict(kernel_count=count, stride=(2, 1), padding=padding, dilated_kernel_size=7, groups=groups,
              version=version, flat_dim=flat_dim)
    torch.manual_seed(0)
    ref = ref_modules.Dcls2dK1d(cin, cout, **kw).to(dtype)
    _spread_positions(ref, 3)
    ours = Dcls2dK1d(cin, cout, **kw).to(dtype)
    _compare(ref, ours, torch.randn(2, cin, 9, 10, dtype=dtype), tol)


@pytest.mark.parametrize("cls_name", ["Dcls3_1d", "Dcls2dK1d"])
def test_reflect_padding_and_no_bias_match_reference(cls_name):
    ours_cls = {"Dcls3_1d": Dcls3_1d, "Dcls2dK1d": Dcls2dK1d}[cls_name]
    kw = dict(kernel_count=2, padding=1, dilated_kernel_size=5, groups=4, bias=False, padding_mode="reflect",
              version="gauss")
    if cls_name == "Dcls3_1d":
        kw["dense_kernel_size"] = 3
    ref = getattr(ref_modules, cls_name)(4, 4, **kw).double()
    _spread_positions(ref, 2)
    shape = (1, 4, 5, 6, 7) if cls_name == "Dcls3_1d" else (1, 4, 6, 7)
    _compare(ref, ours_cls(4, 4, **kw).double(), torch.randn(shape, dtype=torch.float64), 1e-12)


@pytest.mark.parametrize("version", ["v1", "gauss", "max"])
def test_dcls3_1d_parameters_names_shapes_and_init_match_reference(version):
    kw = dict(kernel_count=4, padding=(1, 1, 3), dense_kernel_size=(3, 5), dilated_kernel_size=7, groups=2,
              version=version)
    torch.manual_seed(3)
    ref = ref_modules.Dcls3_1d(4, 6, **kw)
    torch.manual_seed(3)
    ours = Dcls3_1d(4, 6, **kw)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd) and list(ours.buffers()) == []
    assert our_sd["weight"].shape == (6, 2, 3, 5, 4) and our_sd["P"].shape == (1, 6, 2, 3, 5, 4)
    for key in ref_sd:  # the same draws in the same order: positions uniform over the grid, as `_DclsN_Md`
        assert torch.equal(our_sd[key], ref_sd[key]), key
    assert ours.P.abs().max() > 1.5  # uniform over +-3 (a N(0, 0.5) init would almost never get here)


@pytest.mark.parametrize("version", ["v0", "v1", "gauss", "max"])
def test_dcls2dk1d_parameters_names_shapes_and_init_match_reference(version):
    kw = dict(kernel_count=4, padding=(3, 0), dilated_kernel_size=7, groups=2, version=version)
    torch.manual_seed(5)
    ref = ref_modules.Dcls2dK1d(4, 6, **kw)
    torch.manual_seed(5)
    ours = Dcls2dK1d(4, 6, **kw)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd) and list(ours.buffers()) == []
    for key in ref_sd:
        assert torch.equal(our_sd[key], ref_sd[key]), key


def test_reference_defaults():
    assert Dcls3_1d(2, 2, 1).version == ref_modules.Dcls3_1d(2, 2, 1).version == "gauss"
    assert Dcls2dK1d(2, 2, 1).version == ref_modules.Dcls2dK1d(2, 2, 1).version == "v1"
    assert Dcls2dK1d(2, 2, 1).flat_dim == 0


def test_flat_dim_orients_the_kernel_and_the_readme_padding_pitfall():
    # flat_dim=0 gives an (L, 1) kernel: with padding (L // 2, 0) a 12x12 map keeps its size.
    layer = Dcls2dK1d(3, 3, 2, padding=(3, 0), dilated_kernel_size=7, groups=3)
    assert layer(torch.randn(1, 3, 12, 12)).shape == (1, 3, 12, 12)
    assert layer.to_conv().kernel_size == (7, 1)
    # The reference README pairs flat_dim=0 with padding (0, L // 2); both implementations then give 6x18.
    kw = dict(kernel_count=2, padding=(0, 3), dilated_kernel_size=7, groups=3)
    x = torch.randn(1, 3, 12, 12)
    assert Dcls2dK1d(3, 3, **kw)(x).shape == ref_modules.Dcls2dK1d(3, 3, **kw)(x).shape == (1, 3, 6, 18)
    assert Dcls2dK1d(3, 3, 2, dilated_kernel_size=7, flat_dim=1).to_conv().kernel_size == (1, 7)


@pytest.mark.parametrize("cls", [Dcls3_1d, Dcls2dK1d])
def test_to_conv_cache_pickle_clamp_and_position_names(cls):
    kw = dict(kernel_count=3, padding=1, dilated_kernel_size=5, groups=2, version="gauss")
    if cls is Dcls3_1d:
        kw["dense_kernel_size"] = 3
    layer = cls(4, 6, **kw).eval()
    x = torch.randn(1, 4, 5, 6, 7) if cls is Dcls3_1d else torch.randn(1, 4, 6, 7)
    conv = layer.to_conv()
    assert type(conv) is (nn.Conv3d if cls is Dcls3_1d else nn.Conv2d)
    with torch.no_grad():
        expected = layer(x)
        torch.testing.assert_close(conv(x), expected, rtol=1e-6, atol=1e-7)
        assert layer._cached_kernel is not None  # eval-mode cache, as Dcls1d/2d/3d
        layer.P.add_(0.2)
        assert not torch.equal(layer(x), expected), "an in-place change invalidates the cached kernel"
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    buf.seek(0)
    again = cls(4, 6, **kw).eval()
    again.load_state_dict(torch.load(buf, weights_only=True))
    with torch.no_grad():
        torch.testing.assert_close(again(x), layer(x))
    assert copy.deepcopy(layer)._cached_kernel is None
    frozen = freeze_dcls(nn.Sequential(copy.deepcopy(layer)))  # the export path: a plain convolution
    assert type(frozen[0]) is type(conv)
    with torch.no_grad():
        torch.testing.assert_close(frozen(x), layer(x), rtol=1e-6, atol=1e-7)
    model = nn.Sequential(layer, Dcls2d(6, 6, 2, dilated_kernel_size=5, version="v1"))
    with torch.no_grad():
        layer.P.uniform_(-9, 9)
    clamp_dcls_parameters(model)
    assert layer.P.abs().max() <= 2
    assert dcls_position_parameter_names(model) == {"0.P", "0.SIG", "1.P"}


@pytest.mark.parametrize(
    "cls,kwargs,error,match",
    [
        (Dcls3_1d, dict(version="v0"), ValueError,
         r"version must be one of \('v1', 'gauss', 'max'\) for Dcls3_1d \(the reference has no v0 here\), got 'v0'"),
        (Dcls3_1d, dict(version="v2"), ValueError, r"version must be one of \('v0', 'v1', 'gauss', 'max'\)"),
        (Dcls3_1d, dict(dense_kernel_size=(3, 3, 3)), ValueError,
         r"dense_kernel_size must be an int or a sequence of 2 ints, got \(3, 3, 3\)"),
        (Dcls3_1d, dict(dense_kernel_size=0), ValueError, r"dense_kernel_size must be >= 1 along every axis"),
        (Dcls3_1d, dict(dilated_kernel_size=(5, 5)), ValueError,
         r"dilated_kernel_size must be an int or a sequence of 1 ints"),
        (Dcls3_1d, dict(stride=(1, 2)), ValueError, r"stride must be an int or a sequence of 3 ints"),
        (Dcls3_1d, dict(padding=-1), ValueError, r"padding must be >= 0 along every axis"),
        (Dcls3_1d, dict(groups=4), ValueError, r"in_channels \(6\) must be divisible by groups \(4\)"),
        (Dcls3_1d, dict(kernel_count=0), ValueError, r"kernel_count must be an int >= 1, got 0"),
        (Dcls2dK1d, dict(flat_dim=2), ValueError,
         r"flat_dim must be 0 \(an \(L, 1\) kernel along H\) or 1 \(a \(1, L\) kernel along W\), got 2"),
        (Dcls2dK1d, dict(padding=(1, 1, 1)), ValueError, r"padding must be an int or a sequence of 2 ints"),
        (Dcls2dK1d, dict(stride=0), ValueError, r"stride must be >= 1 along every axis"),
        (Dcls2dK1d, dict(padding_mode="mirror"), ValueError, r"padding_mode must be one of"),
        (Dcls2dK1d, dict(dilated_kernel_size=(5, 5)), ValueError,
         r"dilated_kernel_size must be an int or a sequence of 1 ints"),
    ],
)
def test_bad_arguments_raise_one_line(cls, kwargs, error, match):
    args = dict(in_channels=6, out_channels=6, kernel_count=3, dilated_kernel_size=5)
    args.update(kwargs)
    with pytest.raises(error, match=match) as info:
        cls(**args)
    assert "\n" not in str(info.value)


def test_wrong_input_rank_and_channels_raise():
    layer = Dcls3_1d(3, 3, 2, dense_kernel_size=3, dilated_kernel_size=5)
    with pytest.raises(ValueError, match=r"Dcls3_1d expects a 5-D \(batched\) or 4-D \(unbatched\) input"):
        layer(torch.randn(3, 8, 8))
    with pytest.raises(ValueError, match="Dcls2dK1d expects 3 input channels"):
        Dcls2dK1d(3, 3, 2, dilated_kernel_size=5)(torch.randn(2, 5, 8, 8))


class DelayedSpikingConv2d(nn.Module):
    """A spiking 3x3 conv layer whose every synapse (o, i, dh, dw) has a learnable delay (SNN-delays issue #5).

    Time-major spikes (T, B, C, H, W) -> (B, C, H, W, T), causal left pad of max_delay - 1 steps -> Dcls3_1d
    (dense 3x3 in space, one position per synapse along time) -> LIF. Synapse delay = max_delay // 2 - P.
    """

    def __init__(self, cin: int, cout: int, max_delay: int, version: str = "gauss"):
        super().__init__()
        self.max_delay = max_delay
        self.delay = Dcls3_1d(cin, cout, kernel_count=1, dense_kernel_size=3, dilated_kernel_size=max_delay,
                              padding=(1, 1, 0), bias=False, version=version)
        self.lif = LIFNeuron(tau=2.0, v_threshold=0.5)

    def currents(self, spikes: torch.Tensor) -> torch.Tensor:
        x = F.pad(spikes.permute(1, 2, 3, 4, 0), (self.max_delay - 1, 0))
        return self.delay(x).permute(4, 0, 1, 2, 3)

    def forward(self, spikes: torch.Tensor) -> torch.Tensor:
        return self.lif(self.currents(spikes))


def test_snn_delays_on_a_2d_conv_layer():
    torch.manual_seed(0)
    T, B, cin, cout, H, W, max_delay = 12, 2, 3, 4, 6, 5, 5
    layer = DelayedSpikingConv2d(cin, cout, max_delay, version="v1")
    delays = torch.randint(0, max_delay, (cout, cin, 3, 3))
    with torch.no_grad():  # integer positions: v1 kernels are exact one-hot delays
        layer.delay.P.copy_((max_delay // 2 - delays).float().view(1, cout, cin, 3, 3, 1))
    spikes = (torch.rand(T, B, cin, H, W) < 0.3).float()
    # Independent computation: per delay value, the synapses with that delay see the input shifted by it in time.
    weight = layer.delay.weight[..., 0].detach()
    expected = torch.zeros(T, B, cout, H, W)
    for d in range(max_delay):
        shifted = torch.cat([torch.zeros(d, B, cin, H, W), spikes[:T - d]])
        w_d = weight * (delays == d)
        expected += F.conv2d(shifted.flatten(0, 1), w_d, padding=1).view(T, B, cout, H, W)
    with torch.no_grad():
        torch.testing.assert_close(layer.currents(spikes), expected, rtol=1e-5, atol=1e-5)

    # Gaussian delays learn: the surrogate gradient reaches the positions and a few steps lower the loss.
    layer = DelayedSpikingConv2d(cin, cout, max_delay, version="gauss")
    target = (torch.rand(T, B, cout, H, W) < 0.2).float()
    optimizer = torch.optim.Adam(layer.parameters(), lr=0.05)
    losses = []
    for _ in range(6):
        loss = F.mse_loss(layer(spikes), target) + F.mse_loss(layer.currents(spikes).sigmoid(), target)
        optimizer.zero_grad()
        loss.backward()
        assert layer.delay.P.grad is not None and layer.delay.P.grad.abs().sum() > 0
        optimizer.step()
        layer.delay.clamp_parameters()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert layer.delay.P.abs().max() <= max_delay // 2
