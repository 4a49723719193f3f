"""Audio models: parameter counts, original-layout checkpoints vs references assembled from timm + the original
front-end / DCLS oracles, waveform input, bad input, label names, the timm contract, and `dcls-zoo tag`."""
import importlib
import argparse
import logging
import re

import pytest
import timm
import torch
import torch.nn as nn

from dcls_zoo.data.audioset_labels import AUDIOSET_LABELS, AUDIOSET_MIDS
from dcls_zoo.layers import Dcls2d, expand_shared_entries

tl_stft = importlib.import_module("torchlibrosa.stft")
ref_dcls = importlib.import_module("DCLS.construct.modules")
logging.getLogger().setLevel(logging.ERROR)

SR = 32000

# Unique trainable parameter counts of the original models, measured on the authors' code.
ORIGINAL_PARAM_COUNTS = {
    "convnext_audioset_tiny": 28_222_767,
    "convnext_audio_tiny": 28_223_855,
    "dcls_convnext_audio_tiny": 28_221_263,
    "convformer_audio_s18": 25_797_847,
    "dcls_convformer_audio_s18": 25_781_207,
    "fastvit_audio_sa24": 21_064_015,
    "dcls_fastvit_audio_sa24": 21_016_655,
}


@pytest.mark.parametrize("name", list(ORIGINAL_PARAM_COUNTS))
def test_parameter_counts_equal_the_originals(name):
    model = timm.create_model(name, device="meta")
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)   # each shared tensor once
    assert trainable == ORIGINAL_PARAM_COUNTS[name]


def test_dcls_convnext_state_dict_repeats_shared_positions_like_the_original():
    model = timm.create_model("dcls_convnext_audio_tiny", device="meta")
    # one key per shared tensor in the state dict; in the originals' form (every layer's copy), their count
    assert sum(v.numel() for v in expand_shared_entries(model.state_dict(), model).values()) == 28_760_399
    assert len({id(m.P) for m in model.modules() if isinstance(m, Dcls2d)}) == 4


def test_label_names_are_the_527_audioset_classes():
    assert len(AUDIOSET_LABELS) == len(set(AUDIOSET_MIDS)) == 527
    assert (AUDIOSET_LABELS[0], AUDIOSET_LABELS[137], AUDIOSET_LABELS[151]) == ("Speech", "Music", "Ukulele")
    assert AUDIOSET_MIDS[0] == "/m/09x0r" and AUDIOSET_LABELS[-1] == "Field recording"
    for name in ORIGINAL_PARAM_COUNTS:
        cfg = timm.models.get_pretrained_cfg(name)
        assert tuple(cfg.label_names) == AUDIOSET_LABELS and cfg.num_classes == 527


# ---------------------------------------------------------------------------------------------------------------
# AudioSet ConvNeXt (waveform in)
# ---------------------------------------------------------------------------------------------------------------

class _ReferenceAudioSetConvNeXt(nn.Module):
    """The original model assembled from its parts: torchlibrosa front-end, bn0 over mel bins, timm ConvNeXt-T with
    the time-padded stem, and the original pooling (mean over frequency, max + mean over time) written out here."""

    def __init__(self, depths=(3, 3, 9, 3)):
        super().__init__()
        self.spectrogram_extractor = tl_stft.Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann",
                                                         center=True, pad_mode="reflect", freeze_parameters=True)
        self.logmel_extractor = tl_stft.LogmelFilterBank(sr=SR, n_fft=1024, n_mels=224, fmin=50, fmax=14000,
                                                         ref=1.0, amin=1e-10, top_db=None, freeze_parameters=True)
        self.bn0 = nn.BatchNorm2d(224)
        self.backbone = timm.models.convnext.ConvNeXt(in_chans=1, num_classes=527, depths=depths)   # ConvNeXt-T dims
        self.backbone.stem[0] = nn.Conv2d(1, 96, kernel_size=4, stride=4, padding=(4, 0))

    def frames(self, wave):
        x = self.logmel_extractor(self.spectrogram_extractor(wave))
        x = self.bn0(x.transpose(1, 3)).transpose(1, 3)
        return self.backbone.forward_features(x)

    def embedding(self, wave):
        x = self.frames(wave).mean(dim=3)
        x = x.amax(dim=2) + x.mean(dim=2)
        return nn.functional.layer_norm(x, (768,), self.backbone.head.norm.weight, self.backbone.head.norm.bias, 1e-6)

    def forward(self, wave):
        return self.backbone.head.fc(self.embedding(wave))


def _randomize(model: nn.Module) -> nn.Module:
    """Random values everywhere a trained model has them (layer scales, norms, BN statistics, DCLS positions)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if name.endswith(".P"):
                p.uniform_(-11, 11, generator=g)
            elif name.endswith(".SIG"):
                p.uniform_(-0.5, 0.5, generator=g)
            elif name.endswith(("gamma", "layer_scale", "scale")) or p.dim() == 1:
                p.normal_(0.5 if name.endswith(("gamma", "weight", "scale")) else 0.0, 0.1, generator=g)
            else:
                p.normal_(0, 0.05, generator=g)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.5, generator=g)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 2.0, generator=g)
    return model.eval()


def _fb_convnext_keys(key: str) -> str:
    """timm ConvNeXt names -> the FB ConvNeXt names of the original checkpoints (inverse of timm's filter)."""
    key = re.sub(r"^stem\.", "downsample_layers.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.(\d+)", r"downsample_layers.\1.\2", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)", r"stages.\1.\2", key)
    key = key.replace("conv_dw", "dwconv").replace("mlp.fc", "pwconv")
    key = re.sub(r"^head\.norm\.", "norm.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


def _audioset_original_state_dict(reference: _ReferenceAudioSetConvNeXt) -> dict:
    """The released model's 190 keys: front-end, bn0, FB backbone names, norm, head_audioset."""
    sd = {}
    for k, v in reference.state_dict().items():
        if k.startswith("backbone."):
            k = _fb_convnext_keys(k[len("backbone."):])
            k = re.sub(r"^head\.", "head_audioset.", k)
        sd[k] = v
    return sd


SMALL_DEPTHS = (1, 1, 2, 1)   # parity tests use fewer blocks (full sizes are checked by the parameter counts)


def test_audioset_convnext_original_layout_has_the_released_190_keys():
    original = _audioset_original_state_dict(_ReferenceAudioSetConvNeXt())
    assert len(original) == 190
    assert original["logmel_extractor.melW"].shape == (513, 224)
    assert original["spectrogram_extractor.stft.conv_real.weight"].shape == (513, 1, 1024)
    assert original["downsample_layers.0.0.weight"].shape == (96, 1, 4, 4)
    assert {"bn0.running_var", "stages.2.8.gamma", "head_audioset.weight", "norm.bias"} <= set(original)


@pytest.fixture(scope="module")
def audioset_reference():
    torch.manual_seed(0)
    return _randomize(_ReferenceAudioSetConvNeXt(SMALL_DEPTHS))


@pytest.mark.parametrize("container", ["zenodo_pth", "hf_safetensors"])
def test_audioset_convnext_original_checkpoint_matches_reference(audioset_reference, container, tmp_path):
    original = _audioset_original_state_dict(audioset_reference)
    if container == "zenodo_pth":   # PANNs-style training container
        path = tmp_path / "convnext_tiny_471mAP.pth"
        torch.save({"iteration": 75000, "model": original, "optimizer": {"state": {}, "param_groups": []}}, path)
    else:
        from safetensors.torch import save_file
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in original.items()}, str(path))
    model = timm.create_model("convnext_audioset_tiny", depths=SMALL_DEPTHS, pretrained=True,
                              pretrained_cfg_overlay=dict(file=str(path))).eval()
    g = torch.Generator().manual_seed(1)
    wave = 0.1 * torch.randn(2, SR, generator=g)
    with torch.no_grad():
        logits = model(wave)
        torch.testing.assert_close(logits, audioset_reference(wave), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.forward_clipwise_probabilities(wave), torch.sigmoid(logits))
        torch.testing.assert_close(model.forward_scene_embeddings(wave), audioset_reference.embedding(wave),
                                   rtol=1e-5, atol=1e-5)
        frames = model.forward_frame_embeddings(wave)
        assert frames.shape == (2, 768, 3, 7)
        torch.testing.assert_close(frames, audioset_reference.frames(wave), rtol=1e-5, atol=1e-5)
    # the filtered state dict loads strictly: nothing missing, nothing unexpected
    from dcls_zoo.models.audio_convnext import checkpoint_filter_fn
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(original, model), strict=True)
    assert not missing and not unexpected


def test_audioset_convnext_refuses_a_checkpoint_with_another_mel_filter_bank(audioset_reference, tmp_path):
    original = _audioset_original_state_dict(audioset_reference)
    original["logmel_extractor.melW"] = original["logmel_extractor.melW"] * 1.01
    path = tmp_path / "other_frontend.pth"
    torch.save({"model": original}, path)
    with pytest.raises(ValueError, match="mel filter bank"):
        timm.create_model("convnext_audioset_tiny", depths=SMALL_DEPTHS, pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(path)))


def test_audioset_convnext_ten_second_geometry_and_bad_input():
    model = timm.create_model("convnext_audioset_tiny", depths=(1, 1, 1, 1)).eval()   # small for speed
    with torch.no_grad():
        assert model.forward_features(torch.zeros(1, 10 * SR)).shape == (1, 768, 31, 7)   # pool_size of the cfg
        assert model.pretrained_cfg["pool_size"] == (31, 7)
        x = 0.1 * torch.randn(2, 8000)
        torch.testing.assert_close(model(x[:, None]), model(x))            # (B, 1, samples)
        torch.testing.assert_close(model(x[:, None, None]), model(x))      # timm's (B, *input_size) view
        model(torch.zeros(1, model.min_samples))
    with pytest.raises(ValueError, match="mono"):
        model(torch.zeros(1, 2, 8000))
    with pytest.raises(ValueError, match="too short"):
        model(torch.zeros(1, model.min_samples - 1))
    with pytest.raises(ValueError, match="too short"):
        model(torch.zeros(1, 0))
    with pytest.raises(ValueError, match="NaN"):
        model(torch.full((1, 8000), float("nan")))
    with pytest.raises(ValueError, match="in_chans=1"):
        timm.create_model("convnext_audioset_tiny", in_chans=3)


def test_audioset_convnext_spec_augment_only_in_training():
    model = timm.create_model("convnext_audioset_tiny", depths=(1, 1, 1, 1))
    x = 0.1 * torch.randn(1, 2 * SR)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model.frontend(x), model.frontend(x))
        model.frontend.train()
        torch.manual_seed(0)
        augmented = model.frontend(x)
    assert (augmented == 0).any() and model.frontend.spec_augment is not None
    assert timm.create_model("convnext_audioset_tiny", spec_augment=False, device="meta").frontend.spec_augment is None


def test_audioset_convnext_head_reset_and_features():
    model = timm.create_model("convnext_audioset_tiny", depths=(1, 1, 1, 1)).eval()
    x = 0.1 * torch.randn(2, SR)
    with torch.no_grad():
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, "")
        assert model(x).shape == (2, 768, 3, 7)
        model.reset_classifier(5, "freq_mean_time_maxmean")
        assert model(x).shape == (2, 5) and isinstance(model.head.fc, nn.Linear)
        features = timm.create_model("convnext_audioset_tiny", depths=(1, 1, 1, 1), features_only=True)(x)
    assert [f.shape[1] for f in features] == [96, 192, 384, 768]
    assert model.group_matcher()["stem"] == r"^frontend|^stem"


# ---------------------------------------------------------------------------------------------------------------
# DCLS-Audio: references assembled from timm's base models + dcls.Dcls2d, original layouts
# ---------------------------------------------------------------------------------------------------------------

def _swap_in_reference_dcls(model: nn.Module, selected) -> None:
    """Replace the selected depthwise convs by dcls 0.1.1's Dcls2d (gauss 23/26), positions tied per stage by the
    originals' rule (a layer wider than all before starts a stage)."""
    widest, shared = 0, None
    for name, conv in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and selected(n, m)]:
        c = conv.in_channels
        layer = ref_dcls.Dcls2d(c, c, kernel_count=26, dilated_kernel_size=23, padding=11, groups=c,
                                bias=conv.bias is not None, version="gauss")
        if c > widest:
            widest, shared = c, (layer.P, layer.SIG)
        layer.P, layer.SIG = shared
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer)


def _dw7x7(name, conv):
    return conv.groups == conv.in_channels == conv.out_channels and conv.kernel_size == (7, 7)


# Parity models: the registered architectures with fewer blocks and narrower stages, because the dcls 0.1.1
# oracle needs ~30 s per full-size forward on one CPU thread. Full sizes are covered by the parameter counts.
SMALL_DIMS = (32, 64, 128, 256)   # FastViT needs each width to divide the next


def _reference_convnext(dcls: bool) -> nn.Module:
    model = timm.models.convnext.ConvNeXt(in_chans=1, num_classes=527, depths=SMALL_DEPTHS, dims=SMALL_DIMS)
    model.stem[0] = nn.Conv2d(1, SMALL_DIMS[0], (2, 16), stride=(2, 16))
    if dcls:
        _swap_in_reference_dcls(model, lambda n, m: n.endswith("conv_dw") and _dw7x7(n, m))
    return model


def _reference_convformer(dcls: bool) -> nn.Module:   # timm's convformer_s18 recipe (SepConv, no-bias norms)
    model = timm.models.metaformer.MetaFormer(
        in_chans=1, num_classes=527, depths=SMALL_DEPTHS, dims=SMALL_DIMS,
        token_mixers=timm.models.metaformer.SepConv, norm_layers=timm.models.metaformer.LayerNorm2dNoBias)
    model.stem.conv = nn.Conv2d(1, SMALL_DIMS[0], (2, 16), stride=(2, 16), bias=False)
    model.head.fc.norm.eps = 1e-5   # the original MlpHead's LayerNorm
    if dcls:
        _swap_in_reference_dcls(model, lambda n, m: n.endswith("token_mixer.dwconv") and _dw7x7(n, m))
    return model


def _reference_fastvit(dcls: bool) -> nn.Module:     # timm's fastvit_sa24 recipe (RepCPE + attention in stage 4)
    from functools import partial
    model = timm.models.fastvit.FastVit(
        in_chans=1, num_classes=527, layers=SMALL_DEPTHS, embed_dims=SMALL_DIMS, mlp_ratios=(4, 4, 4, 4),
        token_mixers=("repmixer", "repmixer", "repmixer", "attention"),
        pos_embs=(None, None, None, partial(timm.models.fastvit.RepConditionalPosEnc, spatial_shape=(7, 7))))
    model.stem = nn.Conv2d(1, SMALL_DIMS[0], (2, 16), stride=(2, 16), bias=False)
    if dcls:
        _swap_in_reference_dcls(model, _dw7x7)
    return model


def _sail_sg_metaformer_keys(key: str) -> str:
    """timm MetaFormer names -> sail-sg MetaFormer names (the released ConvFormer layout)."""
    key = re.sub(r"^stem\.conv\.", "downsample_layers.0.conv.", key)
    key = re.sub(r"^stem\.norm\.", "downsample_layers.0.post_norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.conv\.", r"downsample_layers.\1.conv.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)
    key = re.sub(r"^head\.norm\.", "norm.", key)
    return re.sub(r"^head\.fc\.", "head.", key)


_APPLE_NETWORK_INDEX = {0: 0, 1: 2, 2: 4, 3: 7}   # stage -> index of its blocks in Apple's flat `network`


def _apple_fastvit_keys(key: str) -> str:
    """timm FastViT names -> Apple FastViT names (network.N, rbr_*, convffn, pe, conv_exp)."""
    key = re.sub(r"^stem\.", "patch_embed.", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{_APPLE_NETWORK_INDEX[int(m[1])]}.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"network.{_APPLE_NETWORK_INDEX[int(m[1])] - 1}.", key)
    key = key.replace("stages.3.pos_emb.pos_enc.", "network.6.pe.")
    for timm_name, apple_name in (("conv_kxk", "rbr_conv"), ("conv_scale", "rbr_scale"), ("identity", "rbr_skip"),
                                  ("final_conv", "conv_exp"), ("large_conv", "lkb_origin"), (".mlp.", ".convffn."),
                                  ("se.fc1", "se.reduce"), ("se.fc2", "se.expand")):
        key = key.replace(timm_name, apple_name)
    key = re.sub(r"layer_scale(_\d)?\.gamma$", r"layer_scale\1", key)
    return re.sub(r"^head\.fc\.", "head.", key)


DCLS_AUDIO_CASES = {
    # name: (reference builder, dcls?, timm -> original key map, file name on Zenodo, original key facts)
    "convnext_audio_tiny": (_reference_convnext, False, _fb_convnext_keys, "convnext_audio_tiny.pth",
                            ["downsample_layers.0.0.bias", "stages.2.1.dwconv.weight", "head.weight"]),
    "dcls_convnext_audio_tiny": (_reference_convnext, True, _fb_convnext_keys, "convnext_dcls_audio_tiny.pth",
                                 ["stages.2.1.dwconv.P", "stages.3.0.dwconv.SIG", "norm.weight"]),
    "convformer_audio_s18": (_reference_convformer, False, _sail_sg_metaformer_keys, "convformer_audio_s18.pth",
                             ["downsample_layers.0.post_norm.weight", "downsample_layers.1.pre_norm.weight",
                              "stages.2.1.token_mixer.dwconv.weight", "head.fc1.weight", "head.norm.weight"]),
    "dcls_convformer_audio_s18": (_reference_convformer, True, _sail_sg_metaformer_keys,
                                  "convformer_dcls_audio_s18.pth", ["stages.2.1.token_mixer.dwconv.P"]),
    "fastvit_audio_sa24": (_reference_fastvit, False, _apple_fastvit_keys, "fastvit_audio_sa24.pth",
                           ["patch_embed.weight", "network.6.pe.weight", "network.7.0.convffn.conv.conv.weight",
                            "conv_exp.se.reduce.weight", "network.1.proj.0.lkb_origin.conv.weight"]),
    "dcls_fastvit_audio_sa24": (_reference_fastvit, True, _apple_fastvit_keys, "fastvit_dcls_audio_sa24.pth",
                                ["network.6.pe.P", "network.4.1.convffn.conv.conv.SIG"]),
}
_SMALL_KWARGS = {
    "convnext": dict(depths=SMALL_DEPTHS, dims=SMALL_DIMS),
    "convformer": dict(depths=SMALL_DEPTHS, dims=SMALL_DIMS),
    "fastvit": dict(layers=SMALL_DEPTHS, embed_dims=SMALL_DIMS),
}


def _small(name: str) -> dict:
    return next(v for k, v in _SMALL_KWARGS.items() if k in name)


@pytest.mark.parametrize("name", list(DCLS_AUDIO_CASES))
def test_dcls_audio_original_checkpoint_matches_reference(name, tmp_path):
    build, dcls, to_original, filename, key_facts = DCLS_AUDIO_CASES[name]
    torch.manual_seed(0)
    reference = _randomize(build(dcls))
    original = {to_original(k): v for k, v in reference.state_dict().items()}
    assert len(original) == len(reference.state_dict())        # the key map is one-to-one
    assert all(k in original for k in key_facts), [k for k in key_facts if k not in original]
    assert not any(k.startswith(("stem.", "stages.0.blocks")) for k in original)
    # the authors' training container: EMA weights next to the raw ones, plus an argparse.Namespace
    raw = {k: v + 1.0 if v.is_floating_point() else v for k, v in original.items()}
    path = tmp_path / filename
    torch.save({"model": raw, "model_ema": original, "epoch": 59, "args": argparse.Namespace(model=name)}, path)

    model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), **_small(name))
    model.eval()
    x = torch.randn(2, 1, 128, 160)
    with torch.no_grad():   # timm's loader takes 'model_ema' when present
        torch.testing.assert_close(model(x), reference(x), rtol=1e-5, atol=1e-5)
    if dcls:   # positions are one tensor per stage again (4 stages; FastViT's RepCPE joins stage 4)
        assert len({id(m.P) for m in model.modules() if isinstance(m, Dcls2d)}) == 4
    from dcls_zoo.models.dcls_audio import checkpoint_filter_fn
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(dict(original), model), strict=True)
    assert not missing and not unexpected


def test_dcls_audio_checkpoint_with_disagreeing_position_copies_is_refused(tmp_path):
    model = timm.create_model("dcls_convnext_audio_tiny", depths=(2, 1, 1, 1))
    sd = {k: v.clone() for k, v in expand_shared_entries(model.state_dict(), model).items()}   # every layer's copy
    sd["stages.0.blocks.1.conv_dw.P"] += 1.0
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="should hold one shared tensor"):
        timm.create_model("dcls_convnext_audio_tiny", depths=(2, 1, 1, 1), pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(tmp_path / "bad.pth")))


def test_dcls_audio_safetensors_with_positions_stored_once_loads(tmp_path):
    from safetensors.torch import save_file
    model = _randomize(timm.create_model("dcls_convnext_audio_tiny", depths=(2, 1, 1, 1)))
    stored, seen = {}, set()
    every_copy = expand_shared_entries(model.state_dict(), model)
    for k, v in every_copy.items():   # each shared tensor once, as safetensors requires
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            stored[k] = v.contiguous()
    assert len(stored) < len(every_copy)
    save_file(stored, str(tmp_path / "model.safetensors"))
    loaded = timm.create_model("dcls_convnext_audio_tiny", depths=(2, 1, 1, 1), pretrained=True,
                               pretrained_cfg_overlay=dict(file=str(tmp_path / "model.safetensors"))).eval()
    x = torch.randn(1, 1, 128, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize("name", ["convnext_audio_tiny", "dcls_convformer_audio_s18", "fastvit_audio_sa24"])
def test_waveform_input_runs_the_dcls_audio_front_end(name):
    small = dict(depths=(1, 1, 1, 1)) if "fastvit" not in name else dict(layers=(1, 1, 1, 1))
    mel_model = timm.create_model(name, **small).eval()
    wave_model = timm.create_model(name, waveform_input=True, **small).eval()
    missing, unexpected = wave_model.load_state_dict(mel_model.state_dict(), strict=True)   # same weights
    assert wave_model.pretrained_cfg["input_size"] == (1, 1, 10 * SR)
    librosa = importlib.import_module("librosa")
    g = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(2, 2 * SR, generator=g)
    # the same features computed independently (librosa, HTK mels, no norm, dB, fixed normalisation)
    power = abs(librosa.stft(wave.numpy(), n_fft=1024, hop_length=320, window="hann", center=True,
                                pad_mode="reflect")) ** 2
    mel = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128, fmin=50, fmax=14000, htk=True, norm=None) @ power
    features = (torch.from_numpy(librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)) + 18.2696) / 30.5735
    with torch.no_grad():
        torch.testing.assert_close(wave_model(wave), mel_model(features[:, None].float()), rtol=1e-4, atol=1e-4)
        features_only = timm.create_model(name, waveform_input=True, features_only=True, **small)(wave)
    assert len(features_only) == 4
    with pytest.raises(ValueError, match="mono"):
        wave_model(torch.zeros(1, 2, SR))
    with pytest.raises(ValueError, match="in_chans=1"):
        timm.create_model(name, waveform_input=True, in_chans=3, **small)


@pytest.mark.parametrize("name", ["fastvit_audio_sa24", "dcls_fastvit_audio_sa24"])
def test_fastvit_audio_reparameterizes(name):
    from timm.models import reparameterize_model

    torch.manual_seed(0)   # the SA24 layout at small widths: the stage-4 positional encoding is what matters
    model = timm.create_model(name, layers=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128)).eval()
    with torch.no_grad():   # trained-looking positional encoding and layer scales, so every branch matters
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    x = torch.randn(2, 1, 128, 48)
    with torch.no_grad():
        expected = model(x)
        fused = reparameterize_model(model)
        torch.testing.assert_close(fused(x), expected, rtol=1e-5, atol=1e-5)
    pos_enc = fused.stages[3].pos_emb
    assert pos_enc.reparam_conv is not None and not hasattr(pos_enc, "pos_enc")
    if name.startswith("dcls_"):   # frozen to the 23x23 DCLS grid before the identity was folded in
        assert pos_enc.reparam_conv.kernel_size == (23, 23)


@pytest.mark.parametrize("name", [n for n in DCLS_AUDIO_CASES])
def test_dcls_audio_timm_contract(name):
    model = timm.create_model(name, **_small(name)).eval()
    cfg = model.pretrained_cfg
    assert model.in_chans == cfg["input_size"][0] == 1
    assert f"{cfg['first_conv']}.weight" in model.state_dict() and f"{cfg['classifier']}.weight" in model.state_dict()
    assert model.get_submodule(cfg["first_conv"]).kernel_size == (2, 16)
    x = torch.randn(2, 1, 128, 1001)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert tuple(feats.shape[-2:]) == cfg["pool_size"] and feats.shape[1] == model.num_features
        pre = model.forward_head(feats, pre_logits=True)
        assert pre.shape == (2, model.head_hidden_size) and model(x).shape == (2, 527)
        model.reset_classifier(0)
        assert model(x).shape == pre.shape
        model.reset_classifier(0, "")
        assert model(x).dim() == 4
        model.reset_classifier(10, "avg")
        assert model(x).shape == (2, 10)
    if "convformer" in name:
        assert model.head.fc.norm.eps == 1e-5   # kept through reset_classifier
    assert [info["reduction"] for info in model.feature_info] == [16, 32, 64, 128]   # along time
    from timm.models._manipulate import group_parameters
    groups = group_parameters(model, model.group_matcher(coarse=False))
    assert len(groups) > 2 and any("stem.weight" in n or "stem.0.weight" in n or "stem.conv.weight" in n
                                   for n in next(iter(groups.values())))
    positions = model.no_weight_decay()
    assert all(n.endswith((".P", ".SIG")) for n in positions) and bool(positions) == name.startswith("dcls_")
    with pytest.raises(TypeError):
        timm.create_model(name, not_an_argument=1)
    if "convnext" in name:   # the audio stem is fixed: timm's image-stem arguments are refused, not ignored
        with pytest.raises(TypeError, match=r"takes no patch_size, stem_type: its \(2, 16\) audio stem is fixed"):
            timm.create_model(name, stem_type="overlap", patch_size=8)


def test_audioset_convnext_refuses_image_stem_arguments():
    with pytest.raises(TypeError, match="AudioSetConvNeXt takes no output_stride: its time-padded stem is fixed"):
        timm.create_model("convnext_audioset_tiny", output_stride=16, device="meta")


# ---------------------------------------------------------------------------------------------------------------
# dcls-zoo tag
# ---------------------------------------------------------------------------------------------------------------

def test_tag_command_prints_the_models_top_labels(tmp_path, capsys):
    from dcls_zoo.data.audio_io import pad_or_crop, read_audio, write_wav
    from dcls_zoo.cli import main

    t = torch.arange(int(1.5 * SR)) / SR
    stereo = torch.stack([0.3 * torch.sin(2 * torch.pi * 440 * t), 0.05 * torch.randn(t.numel())])
    write_wav(tmp_path / "clip.wav", stereo, SR)
    # the CLI builds the full-size model: give it a checkpoint of that size
    full = _randomize(timm.create_model("convnext_audioset_tiny"))
    torch.save({"model": full.state_dict()}, tmp_path / "full.pth")

    assert main(["tag", str(tmp_path / "clip.wav"), "--checkpoint", str(tmp_path / "full.pth"), "--top", "3"]) == 0
    out, err = capsys.readouterr()
    assert "averaging 2 channels" in err
    lines = out.strip().splitlines()
    assert len(lines) == 3
    wave, _ = read_audio(tmp_path / "clip.wav")
    with torch.no_grad():   # expected: the model on the mono mix padded to 10 s
        probs = torch.sigmoid(full(pad_or_crop(wave.mean(0), 10 * SR)[None]))[0]
    top = probs.topk(3)
    assert lines == [f"{p:.3f}  {AUDIOSET_LABELS[i]}" for p, i in zip(top.values.tolist(), top.indices.tolist())]

    write_wav(tmp_path / "16k.wav", stereo[:1], 16000)
    assert main(["tag", str(tmp_path / "16k.wav"), "--checkpoint", str(tmp_path / "full.pth")]) == 1
    assert "16000 Hz" in capsys.readouterr().err
    assert main(["tag", str(tmp_path / "clip.wav"), "--model", "resnet18", "--checkpoint", "unused.pth"]) == 1
    assert "audio tagging model" in capsys.readouterr().err
    write_wav(tmp_path / "empty.wav", torch.zeros(1, 0), SR)
    assert main(["tag", str(tmp_path / "empty.wav"), "--checkpoint", str(tmp_path / "full.pth")]) == 1
    assert "empty" in capsys.readouterr().err
