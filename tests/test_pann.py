"""PANNs and PANN-DSC: parity of Cnn14 (and Cnn10, assembled from its blocks) with `panns_inference` on checkpoints
in the original layout written here, parameter counts of every variant, original-layout key mapping, the timm
contract and bad input."""
import csv
import importlib
import logging
import os
import sys
import zipfile

import numpy as np
import pytest
import timm
import torch

from dcls_oracle import randomize_norm_statistics
from dcls_zoo.data.audioset_labels import AUDIOSET_LABELS, AUDIOSET_MIDS
from dcls_zoo.models.pann import checkpoint_filter_fn

logging.getLogger().setLevel(logging.ERROR)
SR = 32000

# Trainable parameters (the frozen torchlibrosa STFT / mel weights excluded), measured on the authors' code:
# PANNs `Cnn6/Cnn10/Cnn14` (the PANNs paper's table: 4.8 M, 5.2 M, 80.8 M) and, from topel/audioset-convnext-inf
# `pytorch/models.py`, `Cnn14Sep`, `Cnn14SepPW`, `Cnn6Next`, `Cnn10Next`, `Cnn14Next` (docs/reference/panns.md).
ORIGINAL_PARAM_COUNTS = {
    "pann_cnn6": 4_837_455,
    "pann_cnn10": 5_219_279,
    "pann_cnn14": 80_753_615,
    "pann_cnn14_dsc": 30_470_543,
    "pann_cnn14_dsc_pw": 52_846_799,
    "pann_cnn6_next": 3_337_935,
    "pann_cnn10_next": 6_141_519,
    "pann_cnn14_next": 95_120_975,
}
PAPER_MILLIONS = {"pann_cnn6": 4.8, "pann_cnn10": 5.2, "pann_cnn14": 80.8}


@pytest.fixture(scope="module")
def panns_inference(tmp_path_factory):
    """`panns_inference.models` imported with HOME pointing at a folder that already holds the labels CSV, so its
    import-time download (`wget` into ~/panns_data) never runs."""
    home = tmp_path_factory.mktemp("home")
    (home / "panns_data").mkdir()
    with open(home / "panns_data" / "class_labels_indices.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "mid", "display_name"])
        for i, (mid, label) in enumerate(zip(AUDIOSET_MIDS, AUDIOSET_LABELS)):
            writer.writerow([i, mid, label])
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HOME", str(home))
        for name in [m for m in sys.modules if m.startswith("panns_inference")]:
            mp.delitem(sys.modules, name)
        module = importlib.import_module("panns_inference.models")
        config = importlib.import_module("panns_inference.config")
    assert config.classes_num == 527 and config.labels == list(AUDIOSET_LABELS)
    assert sorted(p.name for p in (home / "panns_data").iterdir()) == ["class_labels_indices.csv"]
    return module


def _oracle_cnn14(panns_inference, seed=0):
    torch.manual_seed(seed)
    oracle = panns_inference.Cnn14(sample_rate=SR, window_size=1024, hop_size=320, mel_bins=64, fmin=50, fmax=14000,
                                   classes_num=527)
    randomize_norm_statistics(oracle)
    with torch.no_grad():
        for name, p in oracle.named_parameters():  # BatchNorm affine parameters and biases off their init values
            if name.endswith("bias"):
                p.uniform_(-0.2, 0.2)
            elif ".bn" in name or name.startswith("bn0"):
                p.uniform_(0.5, 1.5)
    return oracle.eval()


def _logits(oracle, wave):
    """The oracle's logits: fc_audioset's output, before its sigmoid (plus the clipwise probabilities)."""
    captured = {}
    handle = oracle.fc_audioset.register_forward_hook(lambda m, i, o: captured.update(logits=o))
    try:
        out = oracle(wave)
    finally:
        handle.remove()
    return captured["logits"], out["clipwise_output"], out["embedding"]


def _max_rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_cnn14_original_checkpoint_matches_panns_inference(panns_inference, tmp_path):
    oracle = _oracle_cnn14(panns_inference)
    path = tmp_path / "Cnn14_mAP=0.431.pth"
    torch.save({"iteration": 600000, "model": oracle.state_dict()}, path)
    model = timm.create_model("pann_cnn14", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    g = torch.Generator().manual_seed(7)
    wave = 0.3 * torch.randn(2, SR, generator=g)  # 1 s clips: 101 frames
    with torch.no_grad():
        ref_logits, ref_probs, ref_embedding = _logits(oracle, wave)
        logits = model(wave)
        assert logits.shape == (2, 527)
        assert (logits - ref_logits).abs().max().item() <= 1e-4, _max_rel(logits, ref_logits)
        assert (model.forward_clipwise_probabilities(wave) - ref_probs).abs().max().item() <= 1e-5
        assert (model.forward_scene_embeddings(wave) - ref_embedding).abs().max().item() <= 1e-4
    assert logits.abs().max() > 1e-2  # not a trivially small output
    # the filtered checkpoint loads strictly: nothing missing, nothing unexpected
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(torch.load(path, weights_only=True), model))
    assert not missing and not unexpected


def test_cnn10_matches_a_reference_assembled_from_panns_inference_blocks(panns_inference, tmp_path):
    # panns_inference ships Cnn14 only; Cnn10 is its front-end and bn0 with the first four of its ConvBlocks.
    reference = _oracle_cnn14(panns_inference, seed=1)
    torch.manual_seed(2)
    fc1, fc = torch.nn.Linear(512, 512), torch.nn.Linear(512, 527)
    keep = ("spectrogram_extractor.", "logmel_extractor.", "bn0.", *(f"conv_block{i}." for i in range(1, 5)))
    original = {k: v for k, v in reference.state_dict().items() if k.startswith(keep)}
    original.update({f"fc1.{k}": v for k, v in fc1.state_dict().items()})
    original.update({f"fc_audioset.{k}": v for k, v in fc.state_dict().items()})
    path = tmp_path / "Cnn10_mAP=0.380.pth"
    torch.save({"model": original}, path)
    model = timm.create_model("pann_cnn10", pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    wave = 0.3 * torch.randn(2, SR, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        x = reference.logmel_extractor(reference.spectrogram_extractor(wave))
        x = reference.bn0(x.transpose(1, 3)).transpose(1, 3)
        for i in range(1, 5):
            x = getattr(reference, f"conv_block{i}")(x, pool_size=(2, 2), pool_type="avg")
        x = x.mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        expected = fc(torch.relu(fc1(x)))
        assert (model(wave) - expected).abs().max().item() <= 1e-4


@pytest.mark.parametrize("name", list(ORIGINAL_PARAM_COUNTS))
def test_parameter_counts_equal_the_originals(name):
    with torch.device("meta"):
        model = timm.create_model(name)
    count = sum(p.numel() for p in model.parameters())
    assert count == ORIGINAL_PARAM_COUNTS[name]
    if name in PAPER_MILLIONS:
        assert round(count / 1e6, 1) == PAPER_MILLIONS[name]


def _original_layout(model):
    """Our state dict renamed to the originals' names (conv_block1..N, or conv_block11, 12, 21, ... for the
    Next models), with the torchlibrosa front-end keys the originals carry."""
    from torchlibrosa.stft import LogmelFilterBank, Spectrogram

    names = [f"conv_block{i + 1}" for i in range(len(model.blocks))]
    if model.block_type == "next" and len(model.blocks) > 3:
        names = [f"conv_block{i // 2 + 1}{i % 2 + 1}" for i in range(len(model.blocks))]
    original = {}
    for prefix, module in (
            ("spectrogram_extractor.", Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann",
                                                   center=True, pad_mode="reflect", freeze_parameters=True)),
            ("logmel_extractor.", LogmelFilterBank(sr=SR, n_fft=1024, n_mels=64, fmin=50, fmax=14000, ref=1.0,
                                                   amin=1e-10, top_db=None, freeze_parameters=True))):
        original.update({prefix + k: v for k, v in module.state_dict().items()})
    for k, v in model.state_dict().items():
        if k.startswith("frontend.norm."):
            k = "bn0." + k[len("frontend.norm."):]
        elif k.startswith("blocks."):
            _, index, rest = k.split(".", 2)
            k = f"{names[int(index)]}.{rest}"
        elif k.startswith("head."):
            k = "fc_audioset." + k[len("head."):]
        original[k] = v
    return original


@pytest.mark.parametrize("name,kwargs", [
    ("pann_cnn6", {}),
    ("pann_cnn14_dsc", dict(widths=(8, 16, 32), pools=(True, True, False), embed_dim=24)),
    ("pann_cnn14_dsc_pw", dict(widths=(8, 16, 32), pools=(True, True, False), embed_dim=24)),
    ("pann_cnn10_next", dict(widths=(16, 16, 32, 32), pools=(False, True, False, False), embed_dim=32, stem_width=8)),
])
def test_original_layouts_of_every_block_type_load(name, kwargs, tmp_path):
    torch.manual_seed(0)
    source = timm.create_model(name, **kwargs)
    randomize_norm_statistics(source)
    source.eval()
    original = _original_layout(source)
    assert {"bn0.running_var", "fc_audioset.weight", "logmel_extractor.melW"} <= set(original)
    path = tmp_path / "original.pth"
    torch.save({"iteration": 1, "model": original}, path)
    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **kwargs).eval()
    wave = 0.3 * torch.randn(1, SR, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(model(wave), source(wave), rtol=0, atol=0)


def test_a_checkpoint_with_another_front_end_is_refused(tmp_path):
    torch.manual_seed(0)
    source = timm.create_model("pann_cnn6")
    original = _original_layout(source)
    bad_mel = dict(original, **{"logmel_extractor.melW": original["logmel_extractor.melW"] * 1.01})
    torch.save({"model": bad_mel}, tmp_path / "mel.pth")
    with pytest.raises(ValueError, match=r"checkpoint's logmel_extractor.melW differs from this model's mel filter "
                                         r"bank \(\(513, 64\) vs \(513, 64\)\); it was trained with another front-end"):
        timm.create_model("pann_cnn6", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "mel.pth")))
    key = "spectrogram_extractor.stft.conv_real.weight"
    bad_stft = dict(original, **{key: original[key].flip(-1)})  # a window that is not the periodic Hann
    torch.save({"model": bad_stft}, tmp_path / "stft.pth")
    with pytest.raises(ValueError, match=r"stft.conv_real.weight \(513, 1, 1024\) is not the STFT of this model"):
        timm.create_model("pann_cnn6", pretrained=True, pretrained_cfg_overlay=dict(file=str(tmp_path / "stft.pth")))


def test_timm_contract_features_heads_and_bad_input():
    model = timm.create_model("pann_cnn6").eval()
    cfg = model.pretrained_cfg
    assert cfg["num_classes"] == 527 and cfg["label_names"] == AUDIOSET_LABELS and cfg["classifier"] == "head"
    assert cfg["min_input_size"] == (1, 1, model.min_samples) and model.sample_rate == SR
    wave = 0.3 * torch.randn(2, SR)
    with torch.no_grad():
        features = model.forward_features(wave)
        assert features.shape == (2, 512, 6, 4)  # 101 frames x 64 mels after four 2x2 poolings
        assert model(wave[:, None, None]).shape == (2, 527)  # timm's (B, *input_size) layout
        assert model.forward_head(features, pre_logits=True).shape == (2, 512)
        final, intermediates = model.forward_intermediates(wave)
        assert [t.shape[1] for t in intermediates] == [64, 128, 256, 512]
        torch.testing.assert_close(final, features)
        model.reset_classifier(10)
        assert model(wave).shape == (2, 10)
        model.reset_classifier(0, "")
        assert model(wave).shape == (2, 512, 6, 4)
        with pytest.raises(ValueError, match=r"global_pool='' \(no pooling\) needs num_classes=0, got num_classes=5"):
            model.reset_classifier(5)
    backbone = timm.create_model("pann_cnn6", features_only=True, out_indices=(1, 3)).eval()
    with torch.no_grad():
        assert [t.shape for t in backbone(wave)] == [(2, 128, 25, 16), (2, 512, 6, 4)]
    assert backbone.feature_info.reduction() == [4, 16]
    with pytest.raises(ValueError, match=r"clip of 1000 samples is too short for PANN: at least 4800"):
        model(torch.randn(1, 1000))
    with pytest.raises(ValueError, match=r"PANN takes mono waveforms \(in_chans=1\), got in_chans=3"):
        timm.create_model("pann_cnn6", in_chans=3)
    with pytest.raises(ValueError, match=r"block_type must be one of \('conv5', 'conv3', 'dsc', 'dsc_pw', 'next'\)"):
        timm.create_model("pann_cnn6", block_type="conv7")
    with pytest.raises(ValueError, match=r"7 blocks with 7 poolings need at least 128 mel bins, the front-end has 64"):
        timm.create_model("pann_cnn6", widths=(4,) * 7, pools=(True,) * 7)
    with pytest.raises(TypeError):
        timm.create_model("pann_cnn6", not_a_model_arg=1)


def test_spec_augment_and_dropout_only_in_training():
    model = timm.create_model("pann_cnn14_dsc", widths=(8, 16), pools=(True, True), embed_dim=8)
    wave = 0.3 * torch.randn(2, SR)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(wave), model(wave))
        model.train()
        assert not torch.equal(model(wave), model(wave))
    model.train()
    model(wave).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def _small_cnn6():
    torch.manual_seed(0)
    return timm.create_model("pann_cnn6", widths=(8, 16), embed_dim=8).eval()


def _sampler_state():
    """What PANNs' training loop saves next to the weights (`train_sampler.state_dict()`): NumPy arrays."""
    return {"indexes_per_class": [np.arange(5, dtype=np.int64), np.arange(3, dtype=np.int64)], "queue": [4, 1],
            "pointers_of_classes": [np.int64(2), np.int64(0)], "random_state": np.random.RandomState(0).get_state()}


def _as_numpy1_pickle(path):
    """Rewrite a torch zip checkpoint as NumPy 1.x pickled it (`numpy.core.multiarray`, as the released files)."""
    with zipfile.ZipFile(path) as zf:
        entries = {name: zf.read(name) for name in zf.namelist()}
    pkl = next(name for name in entries if name.endswith("/data.pkl"))
    assert b"numpy._core.multiarray" in entries[pkl]
    entries[pkl] = entries[pkl].replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)


@pytest.mark.parametrize("numpy_pickle", ["numpy2", "numpy1"])
def test_training_container_with_numpy_sampler_state_loads(numpy_pickle, tmp_path):
    source = _small_cnn6()
    path = tmp_path / "Cnn6_mAP=0.343.pth"
    torch.save({"iteration": 540000, "model": _original_layout(source), "sampler": _sampler_state()}, path)
    if numpy_pickle == "numpy1":
        _as_numpy1_pickle(path)
    with pytest.raises(Exception, match="Weights only load failed"):  # what a plain weights_only load says
        torch.load(path, weights_only=True)
    model = timm.create_model("pann_cnn6", widths=(8, 16), embed_dim=8, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    wave = 0.3 * torch.randn(1, SR)
    with torch.no_grad():
        torch.testing.assert_close(model(wave), source(wave), rtol=0, atol=0)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_container_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "Cnn6_mAP=0.343.pth"
    torch.save({"model": _original_layout(_small_cnn6()), "sampler": _RunsCode(str(marker))}, path)
    with pytest.raises((RuntimeError, ValueError, OSError)):  # refused (the message is the loader's)
        timm.create_model("pann_cnn6", widths=(8, 16), embed_dim=8, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))
    assert not marker.exists()


def test_tag_command_runs_a_panns_checkpoint(tmp_path, capsys):
    from dcls_zoo.data.audio_io import pad_or_crop, read_audio, write_wav
    from dcls_zoo.cli import main

    t = torch.arange(int(1.5 * SR)) / SR
    write_wav(tmp_path / "clip.wav", (0.3 * torch.sin(2 * torch.pi * 440 * t))[None], SR)
    torch.manual_seed(0)
    full = timm.create_model("pann_cnn6").eval()  # the CLI builds the full-size model
    randomize_norm_statistics(full)
    torch.save({"iteration": 1, "model": _original_layout(full), "sampler": _sampler_state()},
               tmp_path / "Cnn6_mAP=0.343.pth")
    assert main(["tag", str(tmp_path / "clip.wav"), "--model", "pann_cnn6", "--checkpoint",
                 str(tmp_path / "Cnn6_mAP=0.343.pth"), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    wave, _ = read_audio(tmp_path / "clip.wav")
    with torch.no_grad():  # expected: the model on the clip padded to 10 s
        top = full.forward_clipwise_probabilities(pad_or_crop(wave.mean(0), 10 * SR)[None])[0].topk(3)
    assert lines == [f"{p:.3f}  {AUDIOSET_LABELS[i]}" for p, i in zip(top.values.tolist(), top.indices.tolist())]
