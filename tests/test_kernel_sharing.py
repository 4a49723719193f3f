"""Kernel-shared ConvMixer / SE-ResNet: counts, parity with the original layouts, ties across .to/save/load/step."""
import pytest
import timm
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_model, save_model

from dcls_zoo.layers.sharing import shared_parameter_groups
from dcls_zoo.layers.sharing import share_kernels
from dcls_zoo.models.kernel_sharing import checkpoint_filter_fn


def _count(model):
    return sum(p.numel() for p in model.parameters())  # parameters() yields a shared tensor once


@pytest.mark.parametrize("name, cifar10, cifar100", [
    ("convmixer_256_16_cifar", 1_409_034, 1_432_164),
    ("shared_convmixer_256_16_cifar", 107_274, 130_404),
    ("se_resnet_cifar_d2", 2_771_290, 2_794_420),
    ("shared_se_resnet_cifar_d2", 1_223_002, 1_246_132),
])
def test_unique_parameter_counts(name, cifar10, cifar100):
    assert _count(timm.create_model(name)) == cifar10
    assert _count(timm.create_model(name, num_classes=100)) == cifar100


# ---------------------------------------------------------- original architectures (from the paper code facts)

class _Residual(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return self.fn(x) + x


def _original_convmixer(dim, depth, kernel_size=9, n_classes=10, shared=False):
    """Flat nn.Sequential of the original; shared: one Parameter per group assigned to every conv."""
    dw0, pw0 = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2), nn.Conv2d(dim, dim, 1)
    blocks = []
    for _ in range(depth):
        dw, pw = nn.Conv2d(dim, dim, kernel_size, groups=dim, padding=kernel_size // 2), nn.Conv2d(dim, dim, 1)
        if shared:
            dw.weight, dw.bias, pw.weight, pw.bias = dw0.weight, dw0.bias, pw0.weight, pw0.bias
        blocks.append(nn.Sequential(_Residual(nn.Sequential(dw, nn.GELU(), nn.BatchNorm2d(dim))), pw, nn.GELU(),
                                    nn.BatchNorm2d(dim)))
    return nn.Sequential(nn.Conv2d(3, dim, 1), nn.GELU(), nn.BatchNorm2d(dim), *blocks, nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(dim, n_classes))


class _OriginalSE(nn.Module):
    def __init__(self, c, r=16):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(c, c // r, bias=False), nn.ReLU(), nn.Linear(c // r, c, bias=False),
                                nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(x.mean((2, 3)))[:, :, None, None]


class _OriginalSEBlock(nn.Module):
    def __init__(self, inplanes, planes, stride, share_w=None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        if share_w is not None and inplanes == planes:
            self.conv1.weight = share_w
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if share_w is not None:
            self.conv2.weight = share_w
        self.bn2 = nn.BatchNorm2d(planes)
        self.se = _OriginalSE(planes)
        self.downsample = (nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))
                           if inplanes != planes else None)

    def forward(self, x):
        out = self.se(self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))
        return torch.relu(out + (self.downsample(x) if self.downsample is not None else x))


class _OriginalCifarNet(nn.Module):
    def __init__(self, n_size, shared, num_classes=10):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16)
        inplane = 16
        for i, (planes, stride) in enumerate(((64, 1), (128, 2), (256, 2))):
            share_w = nn.Parameter(torch.randn(planes, planes, 3, 3) * 0.05) if shared else None
            blocks = []
            for s in [stride] + [1] * (n_size - 1):
                blocks.append(_OriginalSEBlock(inplane, planes, s, share_w))
                inplane = planes
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.fc = nn.Linear(inplane, num_classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))


def _randomise_bn(model):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def test_shared_convmixer_matches_original_layout():
    torch.manual_seed(0)
    original = _randomise_bn(_original_convmixer(32, 4, shared=True))
    # the original's state dict repeats each shared tensor under every alias
    assert len(list(original.parameters())) + 4 * 3 == len(list(original.named_parameters(remove_duplicate=False)))
    model = timm.create_model("shared_convmixer_256_16_cifar", dim=32, depth=4).eval()
    model.load_state_dict(checkpoint_filter_fn(original.state_dict(), model))
    assert model.blocks[0][0].fn[0].weight is model.blocks[3][0].fn[0].weight
    assert model.blocks[0][1].bias is model.blocks[3][1].bias
    assert model.blocks[0][0].fn[2].weight is not model.blocks[3][0].fn[2].weight  # BatchNorm never shared
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(model(x), original(x))


def test_unshared_checkpoint_is_refused_by_the_shared_model():
    torch.manual_seed(1)
    original = _original_convmixer(32, 3, shared=False)
    model = timm.create_model("shared_convmixer_256_16_cifar", dim=32, depth=3)
    with pytest.raises(ValueError, match="differ"):
        checkpoint_filter_fn(original.state_dict(), model)
    unshared = timm.create_model("convmixer_256_16_cifar", dim=32, depth=3)
    unshared.load_state_dict(checkpoint_filter_fn(original.state_dict(), unshared))


@pytest.mark.parametrize("shared", [False, True])
def test_se_resnet_matches_original_layout(shared):
    torch.manual_seed(2)
    original = _randomise_bn(_OriginalCifarNet(2, shared))
    name = "shared_se_resnet_cifar_d2" if shared else "se_resnet_cifar_d2"
    model = timm.create_model(name).eval()
    assert _count(model) == _count(original)
    model.load_state_dict(checkpoint_filter_fn(original.state_dict(), model))
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), original(x), rtol=1e-4, atol=1e-5)
    if shared:
        stage = model.layer2
        assert stage[0].conv2.weight is stage[1].conv1.weight is stage[1].conv2.weight
        assert stage[0].conv1.weight is not stage[0].conv2.weight  # in != out: private
        assert stage[0].downsample[0].weight.shape == (128, 64, 1, 1)


def _tie_ids(model):
    return sorted(sorted(group) for group in shared_parameter_groups(model))


def test_ties_survive_to_safetensors_and_timm_loading(tmp_path):
    model = timm.create_model("shared_se_resnet_cifar_d2")
    groups = _tie_ids(model)
    assert len(groups) == 3 and all(len(g) == 3 for g in groups)
    model.to(torch.float64)
    assert _tie_ids(model) == groups and model.layer1[0].conv2.weight.dtype == torch.float64
    model.to(torch.float32)

    path = tmp_path / "model.safetensors"
    save_model(model, str(path))
    with safe_open(str(path), "pt") as f:
        stored = set(f.keys())
    # each shared kernel is registered once, by its owner (3 groups x 2 followers fewer keys than unshared)
    assert stored == set(model.state_dict())
    assert len(stored) == len(timm.create_model("se_resnet_cifar_d2").state_dict()) - 6
    assert not any(name in stored for _, *followers in shared_parameter_groups(model) for name in followers)

    fresh = timm.create_model("shared_se_resnet_cifar_d2")
    load_model(fresh, str(path))
    assert _tie_ids(fresh) == groups
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))

    # timm's own pretrained path (strict load) fills the aliases through checkpoint_filter_fn
    loaded = timm.create_model("shared_se_resnet_cifar_d2", pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(path)))
    assert _tie_ids(loaded) == groups
    assert torch.equal(loaded.layer3[1].conv1.weight, model.layer3[0].conv2.weight)


def test_optimizer_step_accumulates_all_uses_and_keeps_ties():
    torch.manual_seed(3)
    shared = timm.create_model("shared_convmixer_256_16_cifar", dim=16, depth=3, num_classes=4).train()
    unshared = timm.create_model("convmixer_256_16_cifar", dim=16, depth=3, num_classes=4).train()
    expanded = shared.state_dict()   # the originals' form: the shared tensor under every alias
    for owner, *followers in shared_parameter_groups(shared):
        expanded.update({name: expanded[owner] for name in followers})
    unshared.load_state_dict(expanded)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    for model in (shared, unshared):
        nn.functional.cross_entropy(model(x), y).backward()
    expected = sum(unshared.blocks[i][0].fn[0].weight.grad for i in range(3))
    torch.testing.assert_close(shared.blocks[0][0].fn[0].weight.grad, expected)

    opt = torch.optim.SGD(shared.parameters(), lr=0.1)
    before = shared.blocks[2][1].weight.detach().clone()
    opt.step()
    assert not torch.equal(shared.blocks[2][1].weight, before)
    assert shared.blocks[0][1].weight is shared.blocks[2][1].weight
    sd = shared.state_dict()
    assert "blocks.2.1.weight" not in sd and torch.equal(sd["blocks.0.1.weight"], shared.blocks[2][1].weight)


def test_share_kernels_on_a_timm_resnet():
    model = timm.create_model("resnet18", num_classes=10)
    before = _count(model)
    groups = share_kernels(model)  # stages from feature_info: act1, layer1..layer4
    # layer1: all 4 convs 64->64 tie; layers 2-4: conv2 of block 0 and both convs of block 1 tie
    # (block 0's conv1 changes width and stride; the 1x1 shortcut has no partner)
    saved = 3 * 64 * 64 * 9 + sum(2 * c * c * 9 for c in (128, 256, 512))
    assert _count(model) == before - saved
    assert [len(g) for g in groups] == [4, 3, 3, 3]
    assert groups[1] == ["layer2.0.conv2", "layer2.1.conv1", "layer2.1.conv2"]
    assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match="no submodule named 'layer9'"):
        share_kernels(model, stages=["layer9"])
    with pytest.raises(ValueError, match="feature_info"):
        share_kernels(nn.Sequential(nn.Conv2d(1, 1, 1)))
