"""SNN with learnable delays: parity with the original network assembled from dcls + spikingjelly (test-only)."""
import importlib
import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F

from dcls_zoo.models.snn_delays import (
    SigmaSchedule, SnnDelays, checkpoint_filter_fn, convert_delays_for_inference, export_integer_delays,
    rounded_delays,
)

DCLS = importlib.import_module("DCLS.construct.modules")
from spikingjelly.activation_based import functional, layer, neuron, surrogate  # noqa: E402

SHD_TAU = (10.05 + 1e-9) / 10
SSC_TAU = (15 + 1e-9) / 10


class OriginalSnnDelays(nn.Module):
    """The original `SnnDelays` network (state-dict layout `model.{k}`) from dcls.Dcls1d and spikingjelly."""

    def __init__(self, n_in, hidden, n_out, max_delay, tau, drop):
        super().__init__()
        widths, mods = (n_in, *hidden), []
        lif = dict(surrogate_function=surrogate.ATan(alpha=5.0), detach_reset=True, step_mode="m", decay_input=False,
                   store_v_seq=True)
        for i in range(len(hidden)):
            mods += [
                DCLS.Dcls1d(widths[i], widths[i + 1], kernel_count=1, groups=1, dilated_kernel_size=max_delay,
                            bias=False, version="gauss"),
                layer.BatchNorm1d(widths[i + 1], step_mode="m"),
                neuron.LIFNode(tau=tau, v_threshold=1.0, **lif),
                layer.Dropout(drop, step_mode="m"),
            ]
        mods += [
            DCLS.Dcls1d(widths[-1], n_out, kernel_count=1, groups=1, dilated_kernel_size=max_delay, bias=False,
                        version="gauss"),
            neuron.LIFNode(tau=tau, v_threshold=1e9, **lif),
        ]
        self.model = nn.Sequential(*mods)
        self.n_hidden, self.max_delay = len(hidden), max_delay
        with torch.no_grad():  # the original's init_model
            for m in self.model:
                if isinstance(m, DCLS.Dcls1d):
                    nn.init.kaiming_uniform_(m.weight, nonlinearity="relu")
                    nn.init.uniform_(m.P, -max_delay // 2, max_delay // 2)
                    m.clamp_parameters()
                    m.SIG.fill_(max_delay // 2)
                    m.SIG.requires_grad = False

    def forward(self, x):  # (T, B, C) -> (v_seq (T_out, B, n_out), hidden spikes)
        pad = (self.max_delay - 1, (self.max_delay - 1) // 2)
        hidden = []
        for b in range(self.n_hidden):
            x = self.model[4 * b](F.pad(x.permute(1, 2, 0), pad)).permute(2, 0, 1)
            x = self.model[4 * b + 1](x.unsqueeze(3)).squeeze()
            x = self.model[4 * b + 3](self.model[4 * b + 2](x))
            hidden.append(x)
        out = self.model[-2](F.pad(x.permute(1, 2, 0), pad)).permute(2, 0, 1)
        self.model[-1](out)
        v = self.model[-1].v_seq
        functional.reset_net(self)
        return v, hidden

    @torch.no_grad()
    def round_delays(self):  # the original's eval_model transform
        for m in self.model:
            if isinstance(m, DCLS.Dcls1d):
                m.SIG *= 0
                m.version = m.DCK.version = "max"
                m.P.round_()
                m.clamp_parameters()


def _pair(hidden=(24, 24), max_delay=25, tau=SHD_TAU, drop=0.4, n_out=20, seed=0):
    torch.manual_seed(seed)
    oracle = OriginalSnnDelays(140, hidden, n_out, max_delay, tau, drop)
    with torch.no_grad():  # trained-looking BatchNorm statistics so eval mode differs from train mode
        for m in oracle.model:
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.0)
                m.weight.uniform_(1.0, 2.0)
                m.bias.uniform_(0.0, 0.5)
    model = SnnDelays(num_inputs=140, num_classes=n_out, hidden_sizes=hidden, max_delay=max_delay, tau=tau,
                      drop_rate=drop)
    model.load_state_dict(checkpoint_filter_fn(oracle.state_dict(), model))
    return oracle, model


def _spikes(batch=3, steps=30, seed=1):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 3, (batch, steps, 140), generator=g).float()
    return counts * (torch.rand(batch, steps, 140, generator=g) < 0.3)


@pytest.mark.parametrize("name, trainable", [
    ("snn_delays_shd", 214_016), ("snn_delays_ssc", 1_230_848), ("snn_delays_gsc", 1_230_848)])
def test_parameter_counts(name, trainable):
    model = timm.create_model(name)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == trainable
    if name == "snn_delays_shd":
        # 106,496 weights + 106,496 positions + 1,024 BatchNorm; the frozen widths SIG mirror the weights
        assert sum(m.weight.numel() for m in model.delay_layers()) == 106_496
        assert sum(p.numel() for p in model.parameters()) == 214_016 + 106_496


@pytest.mark.parametrize("train", [True, False])
def test_matches_original_in_training_mode(train):
    oracle, model = _pair()
    oracle.train(train)
    model.train(train)
    x = _spikes()
    torch.manual_seed(7)  # same dropout masks: both draw F.dropout(ones_like(x[0])) per layer, in order
    v_ref, hidden_ref = oracle(x.transpose(0, 1))
    torch.manual_seed(7)
    hidden = model.forward_intermediates(x, intermediates_only=True)
    torch.manual_seed(7)
    v = model.forward_potentials(x)
    for h, h_ref in zip(hidden, hidden_ref):
        assert 0 < h.count_nonzero() < h.numel()
        assert torch.equal(h, h_ref.transpose(0, 1))  # every spike identical
    assert torch.equal(v, v_ref.transpose(0, 1))

    if train:
        torch.manual_seed(7)
        torch.testing.assert_close(model(x), v.softmax(-1).sum(1))  # the original's 'sum' read-out


def test_full_width_shd_network_matches_original_exactly():
    # Full SHD widths: ~1.5e5 neuron-steps per layer, where kernel rounding differences of 1e-9 would flip spikes.
    oracle, model = _pair(hidden=(256, 256), drop=0.0, seed=11)
    x = _spikes(batch=4, steps=50, seed=12)
    v_ref, _ = oracle(x.transpose(0, 1))
    assert torch.equal(model.forward_potentials(x), v_ref.transpose(0, 1))


def test_gradients_match_original():
    oracle, model = _pair(drop=0.0)
    x = _spikes(seed=2)
    y = torch.tensor([1, 5, 7])
    v_ref, _ = oracle(x.transpose(0, 1))
    F.cross_entropy(v_ref.softmax(-1).sum(0), y).backward()   # the original's 'sum' loss
    F.cross_entropy(model(x), y).backward()
    ref = dict(oracle.named_parameters())
    for key, value in checkpoint_filter_fn({k: p.grad for k, p in ref.items() if p.grad is not None}, model).items():
        if key.endswith(".rounded"):
            continue
        grad = model.get_parameter(key).grad
        torch.testing.assert_close(grad, value, rtol=1e-3, atol=1e-6, msg=key)
    assert model.blocks[0].delay.SIG.grad is None


@pytest.mark.parametrize("train", [True, False])
def test_matches_original_with_rounded_delays(train):
    oracle, model = _pair(hidden=(20, 20, 20), max_delay=31, tau=SSC_TAU, drop=0.0, n_out=35, seed=3)
    oracle.round_delays()
    convert_delays_for_inference(model)
    oracle.train(train)
    model.train(train)
    x = _spikes(batch=2, steps=40, seed=4)
    v_ref, _ = oracle(x.transpose(0, 1))
    assert torch.equal(model.forward_potentials(x), v_ref.transpose(0, 1))


def test_pretrained_path_loads_original_checkpoint_and_rounds(tmp_path):
    oracle, _ = _pair(hidden=(16, 16))
    path = tmp_path / "snn_delays_Best_ACC.pt"
    torch.save(oracle.state_dict(), path)
    model = timm.create_model(
        "snn_delays_shd", pretrained=True, hidden_sizes=(16, 16), pretrained_cfg_overlay=dict(file=str(path)))
    assert all(bool(m.rounded) for m in model.delay_layers())
    oracle.round_delays()
    oracle.eval()
    model.eval()
    x = _spikes(seed=5)
    assert torch.equal(model.forward_potentials(x), oracle(x.transpose(0, 1))[0].transpose(0, 1))


@pytest.mark.parametrize("layout", ["ours", "original"])
def test_pretrained_with_another_num_classes_replaces_the_whole_head_and_warns_once(tmp_path, caplog, layout):
    torch.manual_seed(0)
    if layout == "ours":
        source = timm.create_model("snn_delays_shd", hidden_sizes=(16, 16))
        state = source.state_dict()
        body = {k: v for k, v in state.items() if k.startswith("blocks.")}
    else:
        oracle, source = _pair(hidden=(16, 16))
        state = oracle.state_dict()
        body = None
    path = tmp_path / "ckpt.pth"
    torch.save(state, path)
    with caplog.at_level("WARNING"):
        model = timm.create_model("snn_delays_shd", pretrained=True, hidden_sizes=(16, 16), num_classes=5,
                                  pretrained_cfg_overlay=dict(file=str(path)))
    replaced = [r for r in caplog.records if "randomly initialised head of 5 classes" in r.getMessage()]
    assert len(replaced) == 1 and "has 20 classes" in replaced[0].getMessage()
    assert not [r for r in caplog.records if "Unexpected keys" in r.getMessage()]
    head = model.head.delay
    assert head.weight.shape == head.P.shape[1:3] + (1,) == (5, 16, 1) and head.SIG.shape == (1, 5, 16, 1)
    # the new head's delays are initialised like any new read-out (SIG at its initial width, P on the grid), then
    # follow the body: the authors' checkpoints are put in their inference mode (rounded delays), head included
    assert head.P.abs().max() <= 12 and not head.SIG.requires_grad
    if layout == "ours":
        assert torch.all(head.SIG == model.sigma_init) and not bool(head.rounded)
    else:
        assert torch.all(head.SIG == 0) and bool(head.rounded) and torch.equal(head.P, head.P.round())
    if body is not None:
        for key, value in body.items():
            assert torch.equal(model.state_dict()[key], value), key
    with torch.no_grad():
        assert model.eval()(_spikes(seed=8)).shape[-1] == 5
    # num_classes=0: no read-out at all, nothing left over
    caplog.clear()
    with caplog.at_level("WARNING"):
        bare = timm.create_model("snn_delays_shd", pretrained=True, hidden_sizes=(16, 16), num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(path)))
    assert isinstance(bare.head, nn.Identity)
    assert not [r for r in caplog.records if "Unexpected keys" in r.getMessage()]


def test_own_saved_folder_reloads_as_saved(tmp_path):
    from dcls_zoo.hub import save_folder

    torch.manual_seed(0)
    model = timm.create_model("snn_delays_shd", hidden_sizes=(16, 16)).eval()  # training-state delays
    save_folder(model, tmp_path / "snn")
    again = timm.create_model(f"local-dir:{tmp_path / 'snn'}", pretrained=True).eval()
    assert not any(bool(m.rounded) for m in again.delay_layers())
    x = _spikes(seed=6)
    assert torch.equal(again.forward_potentials(x), model.forward_potentials(x))


def test_rounded_delays_context_restores_training_state():
    _, model = _pair(drop=0.0)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = _spikes(seed=6)
    with rounded_delays(model):
        inside = model(x)
        assert all(bool(m.rounded) for m in model.delay_layers())
        assert all(torch.equal(m.P, m.P.round()) and not m.SIG.any() for m in model.delay_layers())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    converted = convert_delays_for_inference(model)
    assert torch.equal(converted(x), inside)


def test_exported_integer_delays_reproduce_the_layer():
    _, model = _pair(hidden=(12,), drop=0.0)
    convert_delays_for_inference(model)
    layer = model.blocks[0].delay
    exported = export_integer_delays(model)["blocks.0.delay"]
    delays, weights = exported["delay"], exported["weight"]
    assert delays.dtype == torch.int64 and delays.shape == (12, 140)
    assert delays.min() >= 0 and delays.max() <= 24
    x = torch.randn(2, 140, 15)
    steps = 15 + 12
    expected = torch.zeros(2, 12, steps)
    for o in range(12):
        for i in range(140):
            d = int(delays[o, i])
            expected[:, o, d:min(steps, d + 15)] += weights[o, i] * x[:, i, :max(0, min(15, steps - d))]
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not rounded"):
        export_integer_delays(SnnDelays(hidden_sizes=(4,), num_classes=2))


def test_sigma_schedule_reaches_final_width_after_a_quarter_of_training():
    model = timm.create_model("snn_delays_shd", hidden_sizes=(8, 8))
    assert all(float(m.SIG.flatten()[0]) == 12.0 and not m.SIG.requires_grad for m in model.delay_layers())
    schedule = SigmaSchedule(model, epochs=150)
    assert schedule.final_epoch == 37
    for epoch in range(150):
        schedule.step(epoch)
        if epoch == 0:
            assert schedule.sigma == pytest.approx(12.0 * (0.23 / 12.0) ** (1 / 37), rel=1e-6)
    for m in model.delay_layers():
        torch.testing.assert_close(m.SIG, torch.full_like(m.SIG, 0.23), rtol=1e-4, atol=0)


def test_sigma_schedule_on_fsdp2_sharded_widths(tmp_path):
    """Under FSDP2 SIG is a sharded DTensor between forwards: the schedule reads and scales the stored copy."""
    import os

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000))
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"file://{tmp_path / 'pg'}")
    try:
        model = timm.create_model("snn_delays_shd", hidden_sizes=(8, 8))
        fully_shard(model)
        assert all(isinstance(m.SIG, DTensor) for m in model.delay_layers())
        schedule = SigmaSchedule(model, epochs=8)
        assert schedule.sigma == 12.0
        schedule.step(0)
        expected = 12.0 * (0.23 / 12.0) ** (1 / 2)
        assert schedule.sigma == pytest.approx(expected, rel=1e-6)
        for m in model.delay_layers():
            torch.testing.assert_close(m.SIG.full_tensor(), torch.full(m.SIG.shape, expected), rtol=1e-6, atol=0)
    finally:
        dist.destroy_process_group()


def test_training_groups_and_clamp_follow_the_original_recipe():
    # What the trainer uses for SNN delays (`dcls_parameter_groups`; the snn-delays-shd preset sets
    # position_lr_scale=100), and the clamp before every forward: the original's groups and clamp.
    model = timm.create_model("snn_delays_shd", hidden_sizes=(8, 8))
    groups = {g["name"]: g for g in model.dcls_parameter_groups(lr=1e-3, weight_decay=1e-5, position_lr_scale=100.0)}
    assert groups["dcls_positions"]["lr"] == pytest.approx(0.1) and groups["dcls_positions"]["weight_decay"] == 0.0
    assert {id(m.P) for m in model.delay_layers()} == {id(p) for p in groups["dcls_positions"]["params"]}
    assert groups["decay"]["weight_decay"] == 1e-5
    assert all(n.endswith(".delay.weight") for n in groups["decay"]["names"])
    assert all(".norm." in n for n in groups["no_decay"]["names"]) and groups["no_decay"]["weight_decay"] == 0.0
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]   # the widths SIG are frozen: left out
    assert sorted(grouped) == sorted(trainable) and not any(m.SIG.requires_grad for m in model.delay_layers())
    torch.optim.Adam(list(groups.values()))  # accepted as-is
    with torch.no_grad():
        model.blocks[0].delay.P.fill_(100.0)
        model.head.delay.P.fill_(-100.0)
    model(_spikes(batch=1, steps=4))   # clamped before the forward, as after every optimizer step
    assert model.blocks[0].delay.P.max() == 12 and model.head.delay.P.min() == -12
    with torch.no_grad():
        model.blocks[0].delay.P.fill_(100.0)
    assert model.clamp_parameters() and model.blocks[0].delay.P.max() == 12


def test_timm_contract_pieces():
    model = timm.create_model("snn_delays_shd", hidden_sizes=(8, 8), dtype=torch.float64).eval()
    x = _spikes(batch=2, steps=10).double()
    assert model(x).shape == (2, 20)
    assert torch.equal(model(x[:, None]), model(x))  # (B, 1, T, F), timm's (C, H, W) convention
    convert_delays_for_inference(model)
    model.reset_classifier(5)
    assert model.head.delay.weight.dtype == torch.float64 and bool(model.head.delay.rounded)
    assert model(x).shape == (2, 5)
    model.reset_classifier(0)
    assert model(x).shape == (2, 8)
    with pytest.raises(ValueError, match=r"takes spikes \(batch, time, 140\) .* got shape \(2, 10, 700\)"):
        model(torch.zeros(2, 10, 700))
    with pytest.raises(ValueError, match="in_chans must be 1"):
        timm.create_model("snn_delays_shd", in_chans=3)
    with pytest.raises(TypeError):
        timm.create_model("snn_delays_shd", not_an_arg=1)


# ------------------------------------------------------------------------------------------ SHD/SSC event files

def _write_event_file(path, samples, labels, time_dtype):
    h5py = importlib.import_module("h5py")
    with h5py.File(path, "w") as f:
        grp = f.create_group("spikes")
        times = grp.create_dataset("times", (len(samples),), dtype=h5py.vlen_dtype(np.dtype(time_dtype)))
        units = grp.create_dataset("units", (len(samples),), dtype=h5py.vlen_dtype(np.dtype("uint16")))
        for i, (t, u) in enumerate(samples):
            times[i], units[i] = t.astype(time_dtype), u.astype("uint16")
        f.create_dataset("labels", data=np.asarray(labels, dtype="uint16"))


def _random_events(rng, n, duration_s):
    t = np.sort(rng.uniform(0.02, duration_s, n))
    t[-1] = t[0] + 0.25  # an event exactly on a frame boundary at the end (goes to the last frame)
    return t, rng.integers(0, 700, n)


@pytest.mark.parametrize("time_dtype", ["float32", "float16", "float64"])
def test_event_file_binning_matches_spikingjelly(tmp_path, time_dtype):
    from spikingjelly.datasets.shd import _integrate_events_by_fixed_duration

    from dcls_zoo.data.spikes import SpikingAudioDataset, pad_collate

    rng = np.random.default_rng(0)
    samples = [_random_events(rng, n, d) for n, d in ((300, 0.9), (50, 0.3), (800, 1.2))]
    path = tmp_path / "shd_test.h5"
    _write_event_file(path, samples, [3, 0, 19], time_dtype)
    data = SpikingAudioDataset(path)
    assert len(data) == 3
    for i, (t, u) in enumerate(samples):
        frames = _integrate_events_by_fixed_duration({"t": t.astype(time_dtype), "x": u.astype("uint16")}, 10, 700)
        expected = np.stack([frames[:, 5 * j:5 * (j + 1)].sum(axis=1) for j in range(140)], axis=1)
        counts, label = data[i]
        assert counts.dtype == torch.float32 and counts.shape == expected.shape
        assert np.array_equal(counts.numpy(), expected.astype(np.float32))
        assert counts.sum() == len(t)
    x, y, lengths = pad_collate([data[0], data[1], data[2]])
    assert x.shape == (3, int(lengths.max()), 140) and y.tolist() == [3, 0, 19]
    assert x[1, lengths[1]:].abs().sum() == 0
    model = SnnDelays(hidden_sizes=(8,), num_classes=20, max_delay=5).eval()
    assert model(x).shape == (3, 20)


def test_event_file_errors(tmp_path):
    from dcls_zoo.data.spikes import SpikingAudioDataset, bin_spike_events

    with pytest.raises(FileNotFoundError, match="no HDF5 file"):
        SpikingAudioDataset(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match=r"\[0, 700\)"):
        bin_spike_events(np.array([0.1, 0.2]), np.array([3, 700]))
    with pytest.raises(ValueError, match="no spikes"):
        bin_spike_events(np.array([]), np.array([]))
