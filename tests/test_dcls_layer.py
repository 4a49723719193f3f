"""The DCLS operator against the authors' `dcls` 0.1.1 package (test-only oracle)."""
import copy
import importlib
import io
import logging
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
from bench_common import saved_bytes_for_backward  # noqa: E402  (the benchmarks' own measure, in scripts/)
from dcls_zoo.layers import Dcls1d, Dcls2d, Dcls3d, clamp_dcls_parameters, dcls_position_parameter_names

ref_modules = importlib.import_module("DCLS.construct.modules")
logging.getLogger().setLevel(logging.ERROR)  # the oracle logs implicit-GEMM warnings on every construction

OURS = {1: Dcls1d, 2: Dcls2d, 3: Dcls3d}
REFS = {1: ref_modules.Dcls1d, 2: ref_modules.Dcls2d, 3: ref_modules.Dcls3d}
VERSIONS = ("v0", "v1", "gauss", "max")

# (in, out, groups, kernel_count, dilated size per ndim, stride, padding, padding_mode)
CONFIGS = {
    "depthwise": (6, 6, 6, 5, {1: 9, 2: 7, 3: 5}, 1, "half", "zeros"),
    "dense": (4, 6, 1, 3, {1: 7, 2: 5, 3: 3}, 1, 0, "zeros"),
    "grouped_nonsquare_stride": (4, 6, 2, 4, {1: 9, 2: (5, 9), 3: (3, 5, 7)}, 2, 1, "zeros"),
    "reflect": (4, 4, 4, 3, {1: 5, 2: 5, 3: 3}, 1, 1, "reflect"),
}


def _pair_of_layers(ndim, version, config, dtype, seed=0):
    cin, cout, groups, count, dks, stride, padding, mode = CONFIGS[config]
    dks = dks[ndim]
    if padding == "half":
        padding = dks // 2
    kw = dict(kernel_count=count, stride=stride, padding=padding, dilated_kernel_size=dks, groups=groups,
              bias=True, padding_mode=mode, version=version)
    torch.manual_seed(seed)
    ref = REFS[ndim](cin, cout, **kw).to(dtype)
    with torch.no_grad():  # spread positions over (and slightly past) the whole grid, as after training
        for d, size in enumerate(ref.dilated_kernel_size):
            ref.P[d].uniform_(-(size // 2) - 0.5, size // 2 + 0.5)
        if ref.SIG is not None:
            ref.SIG.uniform_(-0.6, 0.6)
    ours = OURS[ndim](cin, cout, **kw).to(dtype)
    ours.load_state_dict(ref.state_dict())
    return ref, ours, cin


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_outputs_and_gradients_match_reference(ndim, version, config, dtype, tol):
    ref, ours, cin = _pair_of_layers(ndim, version, config, dtype)
    x = torch.randn(2, cin, *([11] * ndim), dtype=dtype)
    x_ref, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y_ours = ref(x_ref), ours(x_ours)
    assert y_ours.shape == y_ref.shape and y_ours.dtype == dtype
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


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)], ids=["fp32", "fp64"])
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_v0_positions_on_taps_at_the_border_and_far_off_the_grid_match_reference(ndim, dtype, tol):
    # v0 writes each element into its 2^ndim corners (a margin of 2 taps catches those off the grid): integer
    # positions, the last tap, just past it and far away (mass lost, no gradient) must all behave as the reference.
    ref, ours, cin = _pair_of_layers(ndim, "v0", "grouped_nonsquare_stride", dtype, seed=3)
    with torch.no_grad():
        for d, size in enumerate(ref.dilated_kernel_size):
            half = size // 2
            choices = torch.tensor([-half, half, half - 1, 0.0, half + 0.25, -half - 0.75, 3.0 * size, -4.5 * size,
                                    half + 1.0, 0.5], dtype=dtype)
            ref.P[d].copy_(choices[torch.randint(len(choices), ref.P[d].shape)])
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(2, cin, *([11] * ndim), dtype=dtype)
    y_ref, y_ours = ref(x), ours(x)
    assert _rel(y_ours, y_ref) <= tol
    grad = torch.randn_like(y_ref)
    y_ref.backward(grad)
    y_ours.backward(grad)
    for name in ("weight", "P", "bias"):
        assert _rel(getattr(ours, name).grad, getattr(ref, name).grad) <= tol, f"{name} gradient"


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_v0_separable_construction_kept_for_dtensors_and_cuda_equals_the_scattered_one(ndim, monkeypatch):
    import dcls_zoo.layers.dcls as dcls_module

    _, ours, _ = _pair_of_layers(ndim, "v0", "grouped_nonsquare_stride", torch.float64, seed=4)
    scattered = ours.construct_kernel()
    monkeypatch.setattr(dcls_module, "_is_dtensor", lambda t: True)   # what a DTensor weight or P selects
    separable = ours.construct_kernel()
    assert torch.allclose(scattered, separable, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_parameters_names_shapes_and_init_match_reference(ndim, version):
    kw = dict(kernel_count=5, padding=3, dilated_kernel_size=7, groups=2, version=version)
    torch.manual_seed(1)
    ref = REFS[ndim](4, 6, **kw)
    torch.manual_seed(1)
    ours = OURS[ndim](4, 6, **kw)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)  # same keys, same order, no buffers
    assert list(ours.buffers()) == []
    for key in ref_sd:  # same random draws in the same order: the reference initialisation exactly
        assert torch.equal(our_sd[key], ref_sd[key]), key


def test_reference_axis_conventions():
    # v0: P[0] moves along rows; v1/gauss/max: P[0] moves along columns; non-square offsets as the reference.
    for version, expected in (("v0", (4, 3)), ("v1", (3, 4))):
        layer = Dcls2d(1, 1, kernel_count=1, dilated_kernel_size=7, version=version)
        with torch.no_grad():
            layer.weight.fill_(1.0)
            layer.P.zero_()
            layer.P[0].fill_(1.0)
        kernel = layer.construct_kernel()[0, 0]
        assert divmod(int(kernel.argmax()), 7) == expected
    layer = Dcls2d(1, 1, kernel_count=1, dilated_kernel_size=(5, 9), version="v1")
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.P.zero_()
    assert divmod(int(layer.construct_kernel()[0, 0].argmax()), 9) == (4, 2)  # the reference's quirk, kept


@pytest.mark.parametrize("version,size,count", [("v0", 17, 34), ("v1", 17, 34), ("gauss", 23, 26)])
def test_convnext_tiny_construction_keeps_under_0_1_gib_for_backward(version, size, count):
    # The 18 DCLS layers of a ConvNeXt-T (depths 3-3-9-3, widths 96-768). The reference keeps 1.1-2.5 GiB of
    # (size, size, 2, C, 1, count) construction intermediates for backward; ours keeps only the dense kernels.
    total = 0
    for width, depth in ((96, 3), (192, 3), (384, 9), (768, 3)):
        layer = Dcls2d(width, width, kernel_count=count, dilated_kernel_size=size, padding=size // 2,
                       groups=width, version=version)
        x = torch.randn(1, width, 4, 4)
        saved, _ = saved_bytes_for_backward(lambda: layer(x), exclude=[x, *layer.parameters()])
        total += depth * saved
    assert total < 0.1 * 2**30


@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels_last"])
def test_layer_keeps_no_copy_of_its_input_for_backward(fmt):
    # The convolution runs in channels_last whatever the input's layout; an NCHW input must not leave a converted
    # copy (as large as the input) saved between forward and backward. What is kept: the dense kernel.
    layer = Dcls2d(96, 96, kernel_count=34, dilated_kernel_size=17, padding=8, groups=96, version="v0")
    x = torch.randn(2, 96, 56, 56).contiguous(memory_format=fmt).requires_grad_()
    saved, y = saved_bytes_for_backward(lambda: layer(x), exclude=[x, *layer.parameters()])
    assert y.is_contiguous(memory_format=torch.channels_last)
    kernel_bytes = layer.construct_kernel().numel() * 4
    assert saved <= 2 * kernel_bytes and saved < x.numel() * 4 // 4, (saved, kernel_bytes)
    y.backward(torch.ones_like(y))
    reference = Dcls2d(96, 96, kernel_count=34, dilated_kernel_size=17, padding=8, groups=96, version="v0")
    reference.load_state_dict(layer.state_dict())
    x2 = x.detach().clone().requires_grad_()
    kernel = reference.construct_kernel()
    torch.nn.functional.conv2d(x2, kernel, reference.bias, 1, 8, 1, 96).backward(torch.ones_like(y))
    assert torch.allclose(x.grad, x2.grad, rtol=1e-5, atol=1e-5)
    assert torch.allclose(layer.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)


def test_reference_construction_keeps_much_more_for_backward():
    # Sanity check of the measurement itself on one reference layer (ConvNeXt-T stage 1, v1 17/34).
    layer = REFS[2](96, 96, kernel_count=34, dilated_kernel_size=17, padding=8, groups=96, version="v1")
    x = torch.randn(1, 96, 4, 4)
    saved, _ = saved_bytes_for_backward(lambda: layer(x), exclude=[x, *layer.parameters()])
    assert saved > 10 * 2**20


def test_channels_last_path_is_numerically_the_same():
    layer = Dcls2d(8, 8, kernel_count=6, dilated_kernel_size=17, padding=8, groups=8, version="v1")
    x = torch.randn(2, 8, 20, 20)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the fast path was taken
    y_plain = torch.nn.functional.conv2d(x, layer.construct_kernel(), layer.bias, 1, 8, 1, 8)
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-6)


def test_to_conv_is_exact():
    layer = Dcls2d(4, 6, kernel_count=3, dilated_kernel_size=(5, 7), padding=(2, 3), groups=2, version="gauss")
    x = torch.randn(1, 4, 9, 9)
    conv = layer.to_conv()
    assert isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (5, 7)
    torch.testing.assert_close(conv(x), layer(x), rtol=1e-6, atol=1e-7)


def test_eval_kernel_cache_reuse_and_invalidation(monkeypatch):
    layer = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4, version="v1").eval()
    calls = []
    original = Dcls2d.construct_kernel
    monkeypatch.setattr(Dcls2d, "construct_kernel", lambda self: calls.append(1) or original(self))
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        y1 = layer(x)
        layer(x)
        assert len(calls) == 1, "eval mode must reuse the kernel"
        layer.P.add_(0.3)  # in-place change, as an optimizer step does
        y2 = layer(x)
        assert len(calls) == 2 and not torch.equal(y1, y2)
        layer.load_state_dict({k: v.clone() for k, v in layer.state_dict().items()})   # same values: reused
        assert torch.equal(layer(x), y2) and len(calls) == 2
        layer.eval()   # evaluation loops call eval() before every batch: the cache stays
        assert torch.equal(layer(x), y2) and len(calls) == 2, "eval() must not drop the cache"
    layer.train()
    layer(x)
    layer(x)
    assert len(calls) == 4, "train mode always rebuilds"
    # eval with grad enabled builds a fresh graph each call, so backward works twice
    layer.eval()
    layer(x).sum().backward()
    layer(x).sum().backward()
    assert layer.P.grad is not None
    clone = copy.deepcopy(layer.eval())
    assert clone._cached_kernel is None


def _fresh_output(layer, x):
    """The output of an identical layer that has never cached anything."""
    twin = copy.deepcopy(layer)
    twin._cached_kernel = twin._cache_key = None
    return twin(x)


@pytest.mark.parametrize("edit", ["data_add", "ema_data", "assign_load", "to_float64", "weight_data"])
def test_eval_kernel_cache_sees_every_kind_of_parameter_change(edit):
    torch.manual_seed(0)
    layer = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4, version="gauss").eval()
    x = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        before = layer(x)   # fills the cache
        if edit == "data_add":   # old-style code: `.data` does not bump the version counter
            layer.P.data.add_(0.7)
        elif edit == "ema_data":   # EMA / momentum-encoder update through .data
            for p in (layer.weight, layer.P, layer.SIG):
                p.data.mul_(0.5).add_(torch.randn_like(p), alpha=0.5)
        elif edit == "assign_load":   # new Parameter objects with new values
            state = {k: v.clone() + 0.25 for k, v in layer.state_dict().items()}
            layer.load_state_dict(state, assign=True)
        elif edit == "to_float64":
            layer.to(torch.float64)
            x = x.double()
        elif edit == "weight_data":
            layer.weight.data.mul_(-1)
        after = layer(x)
        assert after.dtype == x.dtype   # float64 kernel after .to(float64), not the cached float32 one
        if edit != "to_float64":
            assert not torch.allclose(after, before)
        torch.testing.assert_close(after, _fresh_output(layer, x), rtol=0, atol=0)


def test_pickle_and_device_roundtrip():
    layer = Dcls1d(3, 3, kernel_count=2, dilated_kernel_size=5, padding=2, groups=3, version="gauss").eval()
    with torch.no_grad():
        layer(torch.randn(1, 3, 7))
    buf = io.BytesIO()
    torch.save(layer, buf)
    buf.seek(0)
    again = torch.load(buf, weights_only=False)
    x = torch.randn(1, 3, 7)
    torch.testing.assert_close(again(x), layer(x))
    double = copy.deepcopy(layer).double()
    assert double(x.double()).dtype == torch.float64


def test_clamp_and_position_names():
    model = torch.nn.Sequential(Dcls2d(2, 2, 3, dilated_kernel_size=7, groups=2, version="gauss"),
                                Dcls1d(2, 2, 3, dilated_kernel_size=5, version="v1"))
    with torch.no_grad():
        for p in (model[0].P, model[1].P):
            p.uniform_(-10, 10)
    clamp_dcls_parameters(model)
    assert model[0].P.abs().max() <= 3 and model[1].P.abs().max() <= 2
    assert dcls_position_parameter_names(model) == {"0.P", "0.SIG", "1.P"}


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(kernel_count=0), "kernel_count"),
        (dict(dilated_kernel_size=0), "dilated_kernel_size"),
        (dict(dilated_kernel_size=(3, 3, 3)), "dilated_kernel_size"),
        (dict(groups=4), "divisible by groups"),
        (dict(version="v2"), "version must be one of"),
        (dict(padding_mode="mirror"), "padding_mode"),
        (dict(dilated_kernel_size=7.5), r"^dilated_kernel_size must be an int or a sequence of 2 ints, got 7\.5$"),
        (dict(dilated_kernel_size=(7, 7.0)), "dilated_kernel_size must be an int or a sequence of 2 ints"),
        (dict(dilated_kernel_size=8), r"^Dcls2d: dilated_kernel_size must be odd along every axis .* got \(8, 8\); "
                                      r"use \(9, 9\)$"),
        (dict(dilated_kernel_size=(7, 4)), r"odd along every axis .* use \(7, 5\)$"),
        (dict(kernel_count=True), r"^Dcls2d: kernel_count must be an int >= 1, got True$"),
        (dict(groups=True), "groups must be an int"),
        (dict(stride=1.5), "stride must be an int"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = dict(in_channels=6, out_channels=6, kernel_count=3, dilated_kernel_size=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match) as info:
        Dcls2d(**args)
    assert "\n" not in str(info.value)   # one line


def test_even_sizes_are_refused_in_every_dimension_and_every_original_size_is_odd():
    # dcls 0.1.1 accepts even sizes, but the grid is centred at size // 2 (half a pixel off) and the usual padding
    # size // 2 grows the output by one per axis; every released model (17, 23, 7, the SNN delays 25 / 31) is odd.
    for cls, size in ((Dcls1d, 6), (Dcls3d, (3, 3, 4))):
        with pytest.raises(ValueError, match="must be odd"):
            cls(2, 2, kernel_count=2, dilated_kernel_size=size)


def test_an_input_smaller_than_the_layer_takes_says_the_minimum_size():
    layer = Dcls2d(3, 3, kernel_count=2, dilated_kernel_size=(9, 7), padding=(1, 0), groups=3)
    with pytest.raises(ValueError, match=r"^Dcls2d with dilated_kernel_size \(9, 7\) and padding \(1, 0\) needs a "
                                         r"spatial input of at least 7x7, got 6x12 \(input shape \(2, 3, 6, 12\)\)$"):
        layer(torch.randn(2, 3, 6, 12))
    assert layer(torch.randn(2, 3, 7, 7)).shape == (2, 3, 1, 1)


def test_wrong_input_rank_raises():
    layer = Dcls2d(3, 3, kernel_count=2, dilated_kernel_size=5)
    with pytest.raises(ValueError, match="expects a 4-D"):
        layer(torch.randn(2, 3, 4, 4, 4))
    with pytest.raises(ValueError, match="3 input channels"):
        layer(torch.randn(2, 5, 8, 8))


def test_dclsify_refuses_an_impossible_tie_plan_and_leaves_the_model_unchanged():
    from dcls_zoo.layers import dclsify

    model = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, groups=8), torch.nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="cannot share positions"):
        dclsify(model, version="v1", dilated_kernel_size=7, kernel_count=3)
    assert all(type(m) is torch.nn.Conv2d for m in model)
    dclsify(model, version="v1", dilated_kernel_size=7, kernel_count=3, stage_key=lambda name, conv: name)
    assert all(isinstance(m, Dcls2d) for m in model)


def test_timm_reparameterize_model_freezes_dcls_layers():
    from timm.models import reparameterize_model

    model = torch.nn.Sequential(Dcls2d(4, 4, 3, dilated_kernel_size=7, padding=3, groups=4, version="gauss"),
                                torch.nn.GELU()).eval()
    x = torch.randn(1, 4, 9, 9)
    with torch.no_grad():
        expected = model(x)
        frozen = reparameterize_model(model)
        assert type(frozen[0]) is torch.nn.Conv2d
        torch.testing.assert_close(frozen(x), expected, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# The papers' clamp without a trainer: every model clamps its stored positions before each forward
# ----------------------------------------------------------------------------------------------------------------

def _tiny_dcls_convnext(seed=0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("dcls_convnext_atto", num_classes=4, dims=(8, 16, 24, 32), depths=(2, 1, 2, 1),
                             dcls_dilated_kernel_size=7, dcls_kernel_count=5, ls_init_value=1.0)


def _train(model, steps, clamp_after_step, lr=1e4):
    """SGD with a huge position learning rate (positions leave the grid every step); returns the trajectory."""
    from dcls_zoo.layers import dcls_parameter_groups

    groups = dcls_parameter_groups(model, lr=1e-2, weight_decay=0.0, position_lr_scale=lr / 1e-2)
    optimizer = torch.optim.SGD(groups, lr=1e-2)
    g = torch.Generator().manual_seed(0)
    trajectory = []
    for _ in range(steps):
        x, y = torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if clamp_after_step:
            clamp_dcls_parameters(model)
        trajectory.append(loss.detach())
    return trajectory


def test_training_loop_without_any_clamp_call_follows_the_explicit_recipe(monkeypatch):
    # the old recipe: clamp after every optimizer step (the model's own pre-forward clamp then finds nothing to do)
    explicit = _tiny_dcls_convnext().train()
    expected = _train(explicit, 4, clamp_after_step=True)
    # a foreign loop (timm's train.py, HF Trainer, a user's): no clamp call anywhere
    implicit = _tiny_dcls_convnext().train()
    actual = _train(implicit, 4, clamp_after_step=False)
    assert torch.equal(torch.stack(actual), torch.stack(expected))
    implicit(torch.randn(1, 3, 32, 32))   # the last step's positions are clamped by the next forward (eval too)
    for (name, a), b in zip(implicit.state_dict().items(), explicit.state_dict().values()):
        assert torch.equal(a, b), name
    positions = [p for n, p in implicit.named_parameters() if n.endswith(".P")]
    assert max(p.abs().max().item() for p in positions) == 3   # the bound (7 // 2) is reached: the lr is huge
    # without any clamp (the model's pre-forward hook removed) the same loop leaves the grid and diverges
    unclamped = _tiny_dcls_convnext().train()
    unclamped._forward_pre_hooks.clear()
    diverged = _train(unclamped, 4, clamp_after_step=False)
    assert not torch.equal(torch.stack(diverged), torch.stack(expected))
    assert max(p.abs().max().item() for n, p in unclamped.named_parameters() if n.endswith(".P")) > 3


def test_clamp_writes_only_when_out_of_bounds():
    layer = Dcls2d(4, 4, kernel_count=3, dilated_kernel_size=7, padding=3, groups=4, version="v1")
    version = layer.P._version
    assert clamp_dcls_parameters(layer) is False and layer.P._version == version   # in bounds: no write
    with torch.no_grad():
        layer.P[1, 0, 0, 0] = 9.0
    version = layer.P._version
    assert clamp_dcls_parameters(layer) is True and layer.P._version > version
    assert layer.P[1, 0, 0, 0] == 3


def test_gradient_accumulation_and_checkpointing_survive_the_pre_forward_clamp():
    model = _tiny_dcls_convnext().train()
    # two forwards before one backward: the second forward's clamp must not touch tensors the first saved
    loss = model(torch.randn(2, 3, 32, 32)).sum() + model(torch.randn(2, 3, 32, 32)).sum()
    loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n.endswith(".P"))


def test_clamp_reaches_a_dtensor_position_sharded_by_fsdp2(tmp_path):
    """FSDP2 (`fully_shard`) keeps P as a sharded DTensor between forwards: the clamp must change that copy."""
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'pg'}")
    try:
        model = _tiny_dcls_convnext()
        for stage in model.stages:   # the stage is the unit: it holds the owner and the followers of its positions
            fully_shard(stage)
        fully_shard(model)
        stored = model.stages[1].blocks[0].conv_dw.P
        assert isinstance(stored, DTensor)
        with torch.no_grad():
            stored.to_local()[0, 0, 0, 0] = 50.0     # as a step with a huge learning rate leaves it
            stored.to_local()[1, 0, 0, 1] = -50.0
        assert clamp_dcls_parameters(model) is True
        local = model.stages[1].blocks[0].conv_dw.P.to_local()
        assert local[0, 0, 0, 0] == 3 and local[1, 0, 0, 1] == -3
        with torch.no_grad():
            stored.to_local()[0, 0, 0, 0] = 50.0
        model(torch.randn(1, 3, 32, 32)).sum().backward()   # the model's pre-forward clamp, before the unshard
        assert model.stages[1].blocks[0].conv_dw.P.to_local()[0, 0, 0, 0] == 3
        # a non-square layer: each axis has its own bound
        layer = Dcls2d(2, 2, kernel_count=2, dilated_kernel_size=(3, 7), padding=(1, 3), groups=2, version="v1")
        fully_shard(layer)
        with torch.no_grad():
            layer.P.to_local().fill_(9.0)
        layer.clamp_parameters()
        assert layer.P.to_local()[0].max() == 1 and layer.P.to_local()[1].max() == 3
    finally:
        dist.destroy_process_group()
