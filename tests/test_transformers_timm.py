"""Saved DCLS / kernel-sharing folders through transformers' timm integration (`TimmWrapper`), as researchers
load them: `AutoModelForImageClassification.from_pretrained(folder)` and `pipeline("image-classification")`.

Each shared tensor (a stage's DCLS positions, a group's shared kernel) is registered by one layer and followed by
the others, so the folder stores it once, transformers finds every key it expects, and whatever transformers does
to the parameter objects, the followers see it: the ties hold through loading and training steps.
"""
import logging

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from transformers import AutoModelForImageClassification, pipeline

import dcls_zoo  # noqa: F401  (registers the architectures transformers' TimmWrapper asks timm for)
from dcls_zoo.hub import save_folder
from dcls_zoo.layers import DclsNd, shared_parameter_groups

TINY_CONVNEXT = dict(num_classes=3, dims=(16, 24, 32, 40), depths=(2, 2, 3, 2), dcls_dilated_kernel_size=7,
                     dcls_kernel_count=5)
MODELS = {
    "dcls_convnext": ("dcls_convnext_atto", TINY_CONVNEXT),
    "shared_convmixer": ("shared_convmixer_256_16_cifar", dict(dim=16, depth=3, num_classes=3)),
    "shared_se_resnet": ("shared_se_resnet_cifar_d2", dict(channels=(8, 16, 24), stem_width=8, num_classes=3)),
}


def _build(arch, kwargs, seed=0):
    torch.manual_seed(seed)
    model = timm.create_model(arch, **kwargs).eval()
    with torch.no_grad():   # non-trivial values everywhere, so a lost key or a lost tie shows in the outputs
        for name, p in model.named_parameters():
            if name.endswith(".P"):
                p.uniform_(-3, 3)
            else:
                p.add_(torch.randn_like(p) * 0.05)
        for name, b in model.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model


def _tied_objects(model):
    """For every group of names one tensor is used under: the set of tensor objects the layers actually use."""
    modules = dict(model.named_modules())
    objects = []
    for names in shared_parameter_groups(model):
        objects.append({id(getattr(modules[n.rpartition(".")[0]], n.rpartition(".")[2])) for n in names})
    return objects


@pytest.fixture(scope="module", params=list(MODELS))
def saved(request, tmp_path_factory):
    arch, kwargs = MODELS[request.param]
    model = _build(arch, kwargs)
    folder = tmp_path_factory.mktemp(request.param)
    save_folder(model, folder)
    return request.param, model, folder


def test_timm_wrapper_loads_every_key_and_matches_the_timm_model(saved, caplog):
    name, model, folder = saved
    with caplog.at_level(logging.WARNING):
        hf, info = AutoModelForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert type(hf).__name__ == "TimmWrapperForImageClassification"
    assert info["missing_keys"] == set() or not info["missing_keys"], info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert not [r for r in caplog.records if "newly initialized" in r.getMessage() or "not used" in r.getMessage()]
    hf.eval()
    groups = shared_parameter_groups(hf.timm_model)
    assert groups and [len(g) for g in groups] == [len(g) for g in shared_parameter_groups(model)]
    assert all(len(ids) == 1 for ids in _tied_objects(hf.timm_model))   # one tensor per group after loading
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = hf(pixel_values=x).logits
        expected = model(x)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, expected, rtol=0, atol=1e-5)


def test_ties_hold_after_a_training_step_through_the_timm_wrapper(saved):
    name, _, folder = saved
    hf = AutoModelForImageClassification.from_pretrained(folder).train()
    optimizer = torch.optim.AdamW(hf.parameters(), lr=0.05)
    before = {n: p.detach().clone() for n, p in hf.named_parameters()}
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    hf(pixel_values=x, labels=y).loss.backward()
    optimizer.step()
    modules = dict(hf.timm_model.named_modules())
    for names in shared_parameter_groups(hf.timm_model):
        used = [getattr(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names]
        assert all(t is used[0] for t in used), names   # every block of the stage uses the one updated tensor
        assert not torch.equal(used[0], before[f"timm_model.{names[0]}"]), names   # ... which the step moved
    if name == "dcls_convnext":
        stage = hf.timm_model.stages[2]
        assert len({id(b.conv_dw.P) for b in stage.blocks}) == 1
        hf(pixel_values=x)   # the next forward clamps the step's positions: the papers' bound holds
        assert max(m.P.abs().max().item() for m in hf.modules() if isinstance(m, DclsNd)) <= 3


def test_image_classification_pipeline_matches_the_timm_model(saved):
    _, model, folder = saved
    classifier = pipeline("image-classification", model=str(folder))
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)) for _ in range(2)]
    results = classifier(images, top_k=3)
    pixels = classifier.image_processor(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        expected = model(pixels).softmax(-1)
    id2label = classifier.model.config.id2label
    for result, probs in zip(results, expected):
        for entry in result:
            index = next(i for i, label in id2label.items() if label == entry["label"])
            assert abs(entry["score"] - probs[int(index)].item()) <= 1e-5
