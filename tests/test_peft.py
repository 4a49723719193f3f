"""peft on DCLS models: `modules_to_save`, LoRA targets, `merge_and_unload` and adapter save/load keep each stage's
positions shared (the first block's DCLS layer owns them; the others follow it, also in peft's trainable copies).
"""
import pytest
import timm
import torch
from peft import LoraConfig, PeftModel, get_peft_model

import dcls_zoo  # noqa: F401
from dcls_zoo.layers import DclsNd

TINY = dict(num_classes=3, dims=(8, 16, 24, 32), depths=(2, 2, 3, 2), dcls_dilated_kernel_size=7,
            dcls_kernel_count=5, ls_init_value=1.0)


def _base(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("dcls_convnext_atto", **TINY)


def _config():
    return LoraConfig(r=2, lora_alpha=4, target_modules=["mlp.fc1"], modules_to_save=["conv_dw"])


def _stages_positions(model):
    """Per stage, the P tensors the blocks' active DCLS layers use (peft wrappers resolved to the active copy)."""
    stages = {}
    for name, m in model.named_modules():
        if isinstance(m, DclsNd) and ".original_module" not in name:
            stage = name.split(".blocks.")[0].removeprefix("base_model.model.")
            stages.setdefault(stage, []).append(m.P)
    return stages


def _step(model, lr=0.05):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(3)), torch.tensor([0, 1, 2, 0])
    torch.nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()


def test_modules_to_save_keeps_positions_shared_and_trains_them():
    base = _base()
    before = {stage: ps[0].detach().clone() for stage, ps in _stages_positions(base).items()}
    model = get_peft_model(base, _config())
    stages = _stages_positions(model)
    assert len(stages) == 4 and all(len(ps) >= 2 for ps in stages.values())
    assert all(p.requires_grad for ps in stages.values() for p in ps)   # the trainable copies' (shared) positions
    _step(model.train())
    for stage, ps in _stages_positions(model).items():
        assert all(p is ps[0] for p in ps), stage   # blocks of a stage still use one tensor ...
        assert not torch.equal(ps[0], before[stage]), stage   # ... which the step moved
    # one trainable P per stage in what peft saves
    saved = [k for k in model.state_dict() if k.endswith(".P") and "modules_to_save" in k]
    assert len(saved) == 4


def test_merge_and_unload_and_adapter_save_load_keep_the_ties(tmp_path):
    model = get_peft_model(_base(), _config())
    _step(model.train())
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = model(x)
    model.save_pretrained(tmp_path / "adapter")

    reloaded = PeftModel.from_pretrained(_base(), tmp_path / "adapter").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), expected, rtol=0, atol=1e-6)
    assert all(all(p is ps[0] for p in ps) for ps in _stages_positions(reloaded).values())

    merged = model.merge_and_unload().eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(x), expected, rtol=0, atol=1e-5)
    assert all(all(p is ps[0] for p in ps) for ps in _stages_positions(merged).values())
    assert len([k for k in merged.state_dict() if k.endswith(".P")]) == 4   # one key per stage, as a fresh model
    assert merged.state_dict().keys() == _base().state_dict().keys()


def test_lora_on_a_dcls_layer_is_refused_by_peft_in_one_message():
    # DCLS layers are not LoRA targets (their weight is (out, in / groups, kernel_count), placed by positions);
    # LoRA goes on the Linear / 1x1 layers around them, and DCLS layers are trained whole with modules_to_save.
    with pytest.raises(ValueError, match=r"Target module Dcls2d\(.*\) is not supported"):
        get_peft_model(_base(), LoraConfig(r=2, target_modules=["conv_dw"]))
