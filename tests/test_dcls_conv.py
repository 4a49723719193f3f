"""`dcls_conv`: every gradient formulation against `dcls` 0.1.1 (test-only oracle) and against ATen's convolution."""
import itertools
import logging

import pytest
import torch
import torch.nn.functional as F

from dcls_zoo.layers import Dcls2d
from dcls_zoo.layers.dcls_conv import (
    FFT_MIN_KERNEL_TAPS, _DepthwiseConv2d, choose_weight_grad_path, dcls_conv,
    dcls_conv_paths,
)
from DCLS.construct.modules import Dcls2d as ReferenceDcls2d

logging.getLogger().setLevel(logging.ERROR)  # the oracle logs implicit-GEMM warnings on every construction

PATHS = list(itertools.product(("fft", "direct"), ("flip", "direct")))
PATH_IDS = [f"{w}-{i}" for w, i in PATHS]


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _layer_pair(version, dtype, size=9, count=5, channels=4, stride=1, padding=None, bias=True):
    kw = dict(kernel_count=count, dilated_kernel_size=size, padding=size // 2 if padding is None else padding,
              stride=stride, groups=channels, bias=bias, version=version)
    torch.manual_seed(0)
    ref = ReferenceDcls2d(channels, channels, **kw).to(dtype)
    with torch.no_grad():  # positions over (and slightly past) the whole grid, as after training
        ref.P.uniform_(-(size // 2) - 0.5, size // 2 + 0.5)
        if ref.SIG is not None:
            ref.SIG.uniform_(-0.6, 0.6)
    ours = Dcls2d(channels, channels, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
@pytest.mark.parametrize("version", ("v0", "v1", "gauss", "max"))
def test_every_path_matches_reference_layer(version, paths, dtype, tol):
    ref, ours = _layer_pair(version, dtype)
    x = torch.randn(2, 4, 12, 12, dtype=dtype)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref = ref(x_ref)
    calls = []
    original = _DepthwiseConv2d.apply

    def spy(*args):
        calls.append(args[5:7])
        return original(*args)

    with dcls_conv_paths(*paths), pytest.MonkeyPatch.context() as mp:
        mp.setattr(_DepthwiseConv2d, "apply", spy)
        y_ours = ours(x_ours)
    assert calls == [paths], "the forced path was not taken"
    assert _rel(y_ours, y_ref) <= tol
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_ours.backward(grad)
    assert _rel(x_ours.grad, x_ref.grad) <= tol, "input gradient"
    for name in ("weight", "P", "SIG", "bias"):
        if getattr(ref, name) is not None:
            assert _rel(getattr(ours, name).grad, getattr(ref, name).grad) <= tol, f"{name} gradient"


# (H, W, kernel, stride, padding): square, non-square, stride 2, padding 0, padding > kernel // 2, kernel > input
SHAPES = [
    (11, 11, (7, 7), 1, 3), (9, 13, (5, 9), 1, (2, 4)), (11, 10, (5, 5), 2, 2), (10, 12, (7, 5), 2, (3, 1)),
    (8, 8, (3, 3), 1, 0), (6, 6, (5, 5), 1, 4), (7, 7, (17, 17), 1, 8), (9, 9, (5, 5), 3, 6),
]


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_every_path_matches_aten_on_strides_paddings_and_layouts(paths, dtype, tol, channels_last):
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for h, w, k, stride, padding in SHAPES:
        for bias in (True, False):
            x = torch.randn(2, 3, h, w, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            kernel = torch.randn(3, 1, *k, dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            b = torch.randn(3, dtype=dtype, requires_grad=True) if bias else None
            inputs = (x, kernel) + ((b,) if bias else ())
            y_ref = F.conv2d(x, kernel, b, stride, padding, 1, 3)
            y = dcls_conv(x, kernel, b, stride, padding, 1, 3, weight_grad=paths[0], input_grad=paths[1])
            assert torch.equal(y, y_ref)
            grad = torch.randn_like(y_ref)
            for ours, expected, name in zip(torch.autograd.grad(y, inputs, grad),
                                            torch.autograd.grad(y_ref, inputs, grad), ("input", "kernel", "bias")):
                assert ours.shape == expected.shape and ours.dtype == dtype
                assert _rel(ours, expected) <= tol, f"{name} gradient at {(h, w, k, stride, padding)}"
            if channels_last:
                assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("channels_last", [False, True], ids=["as-given", "channels_last"])
@pytest.mark.parametrize("paths", PATHS, ids=PATH_IDS)
def test_gradcheck_and_double_backward_fp64(paths, channels_last):
    torch.manual_seed(0)
    for h, k, stride, padding in ((6, 3, 1, 1), (7, 5, 2, 2), (5, 5, 1, 4)):
        x = torch.randn(2, 2, h, h + 1, dtype=torch.float64, requires_grad=True)
        kernel = torch.randn(2, 1, k, k, dtype=torch.float64, requires_grad=True)
        bias = torch.randn(2, dtype=torch.float64, requires_grad=True)

        def fn(x, kernel, bias):
            return dcls_conv(x, kernel, bias, stride, padding, 1, 2, weight_grad=paths[0], input_grad=paths[1],
                             channels_last=channels_last)

        assert torch.autograd.gradcheck(fn, (x, kernel, bias))
        assert torch.autograd.gradgradcheck(fn, (x, kernel, bias))


def test_bf16_autocast_and_bf16_tensors_within_bf16_conv_tolerance():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 16, 16, requires_grad=True)
    kernel = torch.randn(4, 1, 9, 9, requires_grad=True)
    bias = torch.randn(4, requires_grad=True)
    y_ref = F.conv2d(x.double(), kernel.double(), bias.double(), 1, 4, 1, 4)
    grad = torch.randn_like(y_ref)
    expected = torch.autograd.grad(y_ref, (x, kernel, bias), grad)
    for paths in PATHS:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = dcls_conv(x, kernel, bias, 1, 4, 1, 4, weight_grad=paths[0], input_grad=paths[1])
        assert y.dtype == torch.bfloat16
        got = torch.autograd.grad(y, (x, kernel, bias), grad.to(torch.bfloat16))
        for g, e in zip(got, expected):
            assert g.dtype == torch.float32 and _rel(g.double(), e) <= 3e-2
        xb, kb = x.detach().bfloat16().requires_grad_(), kernel.detach().bfloat16().requires_grad_()
        y = dcls_conv(xb, kb, None, 1, 4, 1, 4, weight_grad=paths[0], input_grad=paths[1])
        got = torch.autograd.grad(y, (xb, kb), grad.to(torch.bfloat16))
        for g, e in zip(got, expected[:2]):
            assert g.dtype == torch.bfloat16 and _rel(g.double(), e) <= 3e-2


def test_auto_rule_and_plain_routes():
    assert choose_weight_grad_path("cpu", (17, 17), (56, 56)) == "fft"
    assert choose_weight_grad_path("cpu", (7, 7), (56, 56)) == "direct"
    assert choose_weight_grad_path("cpu", (13, 13), (56, 56)) == "fft"
    assert choose_weight_grad_path("cpu", (11, 15), (56, 56)) == "direct"  # 165 taps
    assert choose_weight_grad_path("cpu", (17, 17), (7, 7)) == "fft"
    assert choose_weight_grad_path("cuda", (17, 17), (56, 56)) == "direct"
    assert FFT_MIN_KERNEL_TAPS == 169
    torch.manual_seed(0)
    cases = [  # dense, grouped, 1-D, 3-D, dilation 2, "same" padding: F.conv exactly
        ((2, 4, 9, 9), (6, 4, 3, 3), 1, {}), ((2, 4, 9, 9), (4, 2, 3, 3), 2, {}), ((2, 3, 9), (3, 1, 5), 3, {}),
        ((1, 2, 5, 5, 5), (2, 1, 3, 3, 3), 2, {}), ((2, 3, 9, 9), (3, 1, 3, 3), 3, {"dilation": 2}),
        ((2, 3, 9, 9), (3, 1, 5, 5), 3, {"padding": "same"}),
    ]
    conv = {3: F.conv1d, 4: F.conv2d, 5: F.conv3d}
    for x_shape, k_shape, groups, kw in cases:
        x, kernel = torch.randn(x_shape, requires_grad=True), torch.randn(k_shape, requires_grad=True)
        padding, dilation = kw.get("padding", 1), kw.get("dilation", 1)
        y = dcls_conv(x, kernel, None, 1, padding, dilation, groups)
        assert torch.equal(y, conv[x.dim()](x, kernel, None, 1, padding, dilation, groups))
        assert y.grad_fn.name() != "_DepthwiseConv2dBackward"
    x, kernel = torch.randn(2, 3, 20, 20), torch.randn(3, 1, 17, 17)
    with torch.no_grad():  # no gradient recorded: the plain forward
        assert torch.equal(dcls_conv(x, kernel, None, 1, 8, 1, 3), F.conv2d(x, kernel, None, 1, 8, 1, 3))
    y = dcls_conv(x, kernel.requires_grad_(), None, 1, 8, 1, 3)
    assert y.grad_fn.name() == "_DepthwiseConv2dBackward"
    traced = torch.jit.trace(lambda t, k: dcls_conv(t, k, None, 1, 8, 1, 3), (x, kernel))  # jit.save-able ops
    assert "PythonOp" not in str(traced.graph) and "aten::_convolution" in str(traced.graph)


def test_bad_path_names_raise():
    x, kernel = torch.randn(1, 2, 5, 5), torch.randn(2, 1, 3, 3, requires_grad=True)
    with pytest.raises(ValueError, match=r"weight_grad must be one of \('auto', 'fft', 'direct'\), got 'fast'"):
        dcls_conv(x, kernel, None, 1, 1, 1, 2, weight_grad="fast")
    with pytest.raises(ValueError, match=r"input_grad must be one of \('auto', 'flip', 'direct'\), got 'fft'"):
        with dcls_conv_paths(input_grad="fft"):
            pass
