"""TorchScript and tracing of every DCLS family (and the kernel-shared models): `torch.jit.script` + `torch.jit.save`
+ `torch.jit.load` give the eager outputs, and `torch.jit.trace` passes its own check (`check_trace=True`).

A scripted DCLS layer builds its kernel in TorchScript at every call (no eval cache); layers that follow a stage's
shared positions hand the compiler the owner's tensors. Layers whose kernel is Python-only fail with one line that
points to `dcls_zoo.freeze_dcls`.
"""
import io
import warnings

import pytest
import timm
import torch

import dcls_zoo
from dcls_zoo.layers import Dcls3_1d, DclsNd

# (architecture, small kwargs, input shape): tiny versions of each family, same code paths
FAMILIES = {
    "dcls_convnext": ("dcls_convnext_atto", dict(dims=(8, 16, 24, 32), depths=(2, 1, 2, 1)), (2, 3, 32, 32)),
    "dcls_gauss_convnext": ("dcls_gauss_convnext_tiny", dict(dims=(8, 16, 24, 32), depths=(1, 2, 1, 1)),
                            (2, 3, 32, 32)),
    "dcls_caformer": ("dcls_caformer_s18", dict(dims=(16, 32, 64, 64), depths=(1, 2, 1, 1)), (2, 3, 64, 64)),
    "dcls_convformer": ("dcls_convformer_s18", dict(dims=(16, 32, 64, 64), depths=(1, 2, 1, 1)), (2, 3, 64, 64)),
    "dcls_fastvit": ("dcls_fastvit_sa24", dict(embed_dims=(16, 32, 64, 128), layers=(1, 2, 1, 1)), (2, 3, 64, 64)),
    "dcls_resnet": ("dcls_resnet50", dict(layers=(1, 2, 1, 1)), (2, 3, 32, 32)),
    "shared_convmixer": ("shared_convmixer_256_16_cifar", dict(dim=16, depth=3), (2, 3, 16, 16)),
    "shared_se_resnet": ("shared_se_resnet_cifar_d2", dict(channels=(8, 16, 24), stem_width=8), (2, 3, 32, 32)),
}


def _model(name):
    arch, kwargs, shape = FAMILIES[name]
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=5, **kwargs).eval()
    with torch.no_grad():   # positions spread over the grid, so a wrong (e.g. unshared or stale) P would show
        for pname, p in model.named_parameters():
            if pname.endswith(".P"):
                p.uniform_(-2.5, 2.5)
    return model, torch.randn(shape, generator=torch.Generator().manual_seed(1))


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # torch.jit's deprecation notices
        yield


@pytest.mark.parametrize("name", list(FAMILIES))
def test_script_save_load_gives_the_eager_outputs(name):
    model, x = _model(name)
    with torch.no_grad():
        expected = model(x)
    scripted = torch.jit.script(model)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded(x), expected, rtol=1e-5, atol=1e-6)
    # the eager model is untouched by scripting: same outputs, positions still shared and still learnable
    with torch.no_grad():
        assert torch.equal(model(x), expected)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("name", list(FAMILIES))
def test_trace_passes_its_own_check_in_eval(name):
    model, x = _model(name)
    with torch.no_grad():
        expected = model(x)   # fills the eval kernel cache: tracing must not depend on it
        traced = torch.jit.trace(model, x, check_trace=True)
        torch.testing.assert_close(traced(x), expected, rtol=1e-5, atol=1e-6)
    traced_with_grad = torch.jit.trace(model, x, check_trace=True)   # parameters requiring grad: same graph
    with torch.no_grad():
        torch.testing.assert_close(traced_with_grad(x), expected, rtol=1e-5, atol=1e-6)


def test_a_python_only_dcls_layer_fails_in_one_line_naming_freeze_dcls():
    layer = Dcls3_1d(2, 2, kernel_count=2, dense_kernel_size=3, dilated_kernel_size=5, padding=(1, 1, 2),
                     groups=2, version="v1").eval()
    with pytest.raises(RuntimeError, match=r"^torch\.jit\.script does not support Dcls3_1d .* dcls_zoo\.freeze_dcls"):
        torch.jit.script(torch.nn.Sequential(layer))
    frozen = dcls_zoo.freeze_dcls(torch.nn.Sequential(layer))
    assert not any(isinstance(m, DclsNd) for m in frozen.modules())
    torch.jit.script(frozen)


def test_compile_and_export_trace_through_the_clamp_hook_and_the_followers():
    model, x = _model("dcls_convnext")
    compiled = torch.compile(model.train(), backend="eager")   # Dynamo's tracing, without Inductor's cost
    compiled(x).sum().backward()
    with torch.no_grad():
        model.stages[2].blocks[0].conv_dw.P.fill_(100.0)   # as a huge step leaves it
    compiled(x)
    assert model.stages[2].blocks[1].conv_dw.P.max() == 8   # the pre-forward clamp ran under torch.compile too
    model.eval()
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
        torch.testing.assert_close(exported.module()(x), model(x), rtol=1e-5, atol=1e-6)
