"""Models say what input they take: one line for a wrong layout, size, dtype or value, built here as users do.

Refusals come before any computation; small widths / depths of each family keep the tests cheap (the minimum size
depends on the stem and downsampling layers only). Each minimum is shown to be tight: the unchecked model fails
one pixel / frame below it, so the number is derived, not typed.
"""
from __future__ import annotations

import re

import pytest
import timm
import torch

import dcls_zoo  # noqa: F401  (registers the models)
from dcls_zoo.layers.input_checks import ImageInputMixin, min_spatial_size
from dcls_zoo.lm import OrthoGPT2Config, OrthoGPT2LMHeadModel

DCLS_AUDIO = ["convnext_audio_tiny", "dcls_convnext_audio_tiny", "convformer_audio_s18", "dcls_convformer_audio_s18",
              "fastvit_audio_sa24", "dcls_fastvit_audio_sa24"]
# small widths/depths of the same families (the minimum size depends on the stem and downsampling only)
_SMALL_CONVNEXT = dict(depths=(1, 1, 1, 1), dims=(8, 16, 32, 64))
_SMALL_FASTVIT = dict(layers=(1, 1, 1, 1), embed_dims=(8, 16, 32, 64))
SMALL = {
    "convnext_audio_tiny": _SMALL_CONVNEXT, "dcls_convnext_audio_tiny": _SMALL_CONVNEXT,
    "convformer_audio_s18": _SMALL_CONVNEXT, "dcls_convformer_audio_s18": _SMALL_CONVNEXT,
    "fastvit_audio_sa24": _SMALL_FASTVIT, "dcls_fastvit_audio_sa24": _SMALL_FASTVIT,
    "dcls_convnext_atto": {}, "dcls_convformer_s18": _SMALL_CONVNEXT, "dcls_caformer_s18": _SMALL_CONVNEXT,
    "dcls_fastvit_sa24": _SMALL_FASTVIT, "dcls_resnet50": dict(layers=(1, 1, 1, 1)),
    "hermite_convnext_tiny": _SMALL_CONVNEXT,
}


def _small(name: str, **kwargs):
    return timm.create_model(name, **SMALL[name], **kwargs).eval()


def _meta(name: str, **kwargs):
    return timm.create_model(name, device="meta", **kwargs).eval()


def _unchecked(model, monkeypatch):
    """The same model without its input check, to show what torch would do."""
    monkeypatch.setattr(type(model), "check_input", lambda self, x: None)
    return model


# ------------------------------------------------------------------------------------------------ DCLS-Audio

@pytest.mark.parametrize("name", DCLS_AUDIO)
def test_audio_models_refuse_wrong_mel_layout(name):
    model = _small(name)
    frames = model.min_frames()
    taken = re.escape(f"takes a log-mel (batch, 1, 128 mel bins, time frames >= {frames})")
    with pytest.raises(ValueError, match=taken + r".*got shape \(2, 1, 64, 400\); compute 128 mel bins"):
        model(torch.zeros(2, 1, 64, 400))
    with pytest.raises(ValueError, match=taken + r".*got shape \(2, 1, 1001, 128\); time and mel axes look swapped"):
        model(torch.zeros(2, 1, 1001, 128))
    with pytest.raises(ValueError, match=taken + r", got shape \(1, 128, 1001\); add the batch dimension"):
        model(torch.zeros(1, 128, 1001))
    with pytest.raises(ValueError, match=taken + f", got {frames - 1} frames: pad the clip in time"):
        model(torch.zeros(2, 1, 128, frames - 1))
    with pytest.raises(TypeError, match=f"^{name} has torch.float32 weights but got torch.float64 input"):
        model(torch.zeros(2, 1, 128, 1001, dtype=torch.float64))
    with pytest.raises(TypeError, match="takes floating-point input"):
        model(torch.zeros(2, 1, 128, 1001, dtype=torch.int16))
    # the same checks guard forward_intermediates (features_only / timm's getter)
    with pytest.raises(ValueError, match="time and mel axes look swapped"):
        model.forward_intermediates(torch.zeros(2, 1, 1001, 128))


@pytest.mark.parametrize("name", DCLS_AUDIO)
def test_audio_cfg_min_input_size_is_the_derived_minimum(name):
    model = _meta(name)
    assert model.pretrained_cfg["min_input_size"] == (1, 128, model.min_frames())
    assert timm.models.get_pretrained_cfg_value(name, "min_input_size") == (1, 128, model.min_frames())
    assert model.min_frames() == {"convnext": 128, "convformer": 16, "fastvit": 16}[name.split("_")[-3]]
    waveform = _meta(name, waveform_input=True)
    assert waveform.pretrained_cfg["min_input_size"] == (1, 1, waveform.min_samples())
    assert waveform.min_samples() == (model.min_frames() - 1) * 320   # 1 + samples // hop frames


@pytest.mark.parametrize("name", ["dcls_convnext_audio_tiny", "dcls_convformer_audio_s18", "dcls_fastvit_audio_sa24"])
def test_audio_minimum_is_tight_batch_zero_and_autocast(name, monkeypatch):
    torch.manual_seed(0)
    model = _small(name)
    frames = model.min_frames()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 128, frames)).shape == (2, 527)
        empty = model(torch.randn(0, 1, 128, frames + 7))
        assert empty.shape == (0, 527) and empty.dtype == torch.float32
        with torch.autocast("cpu", dtype=torch.bfloat16):   # autocast casts float32 and its own dtype
            assert model(torch.randn(1, 1, 128, frames, dtype=torch.bfloat16)).shape == (1, 527)
            with pytest.raises(TypeError, match="float64 input"):   # not float64
                model(torch.randn(1, 1, 128, frames, dtype=torch.float64))
        with pytest.raises(RuntimeError):   # what torch says one frame below the derived minimum
            _unchecked(model, monkeypatch)(torch.randn(1, 1, 128, frames - 1))


def test_audio_waveform_input_batch_zero_short_clip_and_float64():
    model = _small("dcls_convnext_audio_tiny", waveform_input=True)
    samples = model.min_samples()
    with torch.no_grad():
        assert model(torch.zeros(0, samples)).shape == (0, 527)
        assert model(torch.randn(1, samples) * 0.1).shape == (1, 527)
    with pytest.raises(ValueError, match=f"clip of 32000 samples is too short, at least {samples} are needed"):
        model(torch.zeros(1, 32000))   # a 1 s clip
    with pytest.raises(TypeError, match="has torch.float32 weights but got torch.float64 input"):
        model(torch.zeros(1, samples, dtype=torch.float64))


def test_audioset_convnext_float64_and_batch_zero():
    model = timm.create_model("convnext_audioset_tiny", depths=(1, 1, 1, 1), dims=(8, 16, 32, 64)).eval()
    samples = model.min_samples
    assert samples == 7360   # 24 frames: the padded (4, 0) stem and three 2x downsamplings
    with pytest.raises(TypeError, match="AudioSetConvNeXt has torch.float32 weights but got torch.float64 input"):
        model(torch.zeros(1, samples, dtype=torch.float64))
    with torch.no_grad():
        assert model(torch.zeros(0, samples)).shape == (0, 527)


def test_audio_num_mels_is_an_argument():
    model = _small("dcls_convformer_audio_s18", num_mels=64)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 64, 32)).shape == (1, 527)
    with pytest.raises(ValueError, match=r"takes a log-mel \(batch, 1, 64 mel bins"):
        model(torch.randn(1, 1, 128, 32))
    with pytest.raises(ValueError, match="num_mels must be a positive int"):
        timm.create_model("dcls_convformer_audio_s18", num_mels=0)


# ------------------------------------------------------------------------------------------------ images

IMAGE_MODELS = {   # model -> minimum (H, W): stem and downsampling convs, read off the modules
    "dcls_convnext_atto": (32, 32),          # 4x4/4 patch stem, then three 2x2/2 downsamplings
    "dcls_convformer_s18": (3, 3),           # 7x7/4 stem padded by 2; padded 3x3/2 downsamplings
    "dcls_caformer_s18": (3, 3),
    "dcls_fastvit_sa24": (1, 1),             # every conv padded
    "dcls_resnet50": (1, 1),
    "hermite_convnext_tiny": (32, 32),
}


def test_every_image_family_checks_its_input():
    classes = {type(_small(n)) for n in IMAGE_MODELS}
    assert {c.__name__ for c in classes} == {"DclsConvNeXt", "DclsMetaFormer", "DclsFastVit", "DclsResNet",
                                              "OrthoConvNeXt"}
    assert all(issubclass(c, ImageInputMixin) for c in classes)


@pytest.mark.parametrize("name", sorted(IMAGE_MODELS))
def test_image_models_refuse_unbatched_small_and_wrong_dtype(name):
    model = _small(name)
    h, w = IMAGE_MODELS[name]
    assert model.min_input_size() == (h, w)
    with pytest.raises(ValueError, match=re.escape(
            f"{name} takes a batch of images (batch, 3, H, W), got a 3-D tensor of shape (3, 224, 224) (a single "
            "image: add the batch dimension with x.unsqueeze(0))")):
        model(torch.zeros(3, 224, 224))
    with pytest.raises(ValueError, match=r"takes 3-channel input .* got shape \(1, 224, 224, 3\) \(channels last"):
        model(torch.zeros(1, 224, 224, 3))
    if h > 1:
        with pytest.raises(ValueError, match=re.escape(f"{name} takes inputs of at least {h}x{w} (H x W; ")):
            model(torch.zeros(1, 3, h - 1, 224))
        with pytest.raises(ValueError, match=f"got 224x{w - 1}: resize or pad the input"):
            model(torch.zeros(1, 3, 224, w - 1))
    with pytest.raises(TypeError, match="takes floating-point input .*got torch.uint8"):
        model(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(TypeError, match="has torch.float32 weights but got torch.float64 input"):
        model.forward_intermediates(torch.zeros(1, 3, 224, 224, dtype=torch.float64))


def test_dcls_convnext_atto_minimum_is_tight_and_follows_the_architecture(monkeypatch):
    model = timm.create_model("dcls_convnext_atto").eval()
    for size in ((31, 31), (64, 8)):
        with pytest.raises(ValueError, match=re.escape(
                f"dcls_convnext_atto takes inputs of at least 32x32 (H x W; its stem and downsampling layers need "
                f"that much), got {size[0]}x{size[1]}: resize or pad the input")):
            model(torch.randn(1, 3, *size))
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 1000)
        assert model(torch.randn(0, 3, 32, 32)).shape == (0, 1000)
        with pytest.raises(RuntimeError):   # torch's own error one pixel below
            _unchecked(model, monkeypatch)(torch.randn(1, 3, 31, 32))
    # read off the layers, not a table: timm's overlapping stem (two padded 3x3 stride-2 convs) needs 29x29; an
    # 8x8 patch stem still 32x32 (timm keeps stage 0's resolution and turns the last downsampling into a
    # run-time "same"-padded conv)
    overlap = timm.create_model("dcls_convnext_atto", stem_type="overlap", **SMALL["hermite_convnext_tiny"]).eval()
    patch8 = timm.create_model("dcls_convnext_atto", patch_size=8, **SMALL["hermite_convnext_tiny"]).eval()
    for model, size in ((overlap, 29), (patch8, 32)):
        assert model.min_input_size() == (size, size)
        with torch.no_grad():
            assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)
            with pytest.raises(RuntimeError):
                _unchecked(model, monkeypatch)(torch.randn(1, 3, size, size - 1))


def test_min_spatial_size_formula():
    conv = torch.nn.Conv2d(1, 1, kernel_size=(3, 5), stride=(2, 3), padding=(1, 0), dilation=(1, 2))
    need = min_spatial_size([conv, conv])
    for axis in range(2):
        size = [64, 64]
        size[axis] = need[axis]
        assert conv(conv(torch.zeros(1, 1, *size))).shape[2 + axis] == 1
        size[axis] -= 1
        with pytest.raises(RuntimeError):
            conv(conv(torch.zeros(1, 1, *size)))


def test_checked_models_still_script_and_fx_trace():
    from timm.models._features_fx import create_feature_extractor

    model = timm.create_model("dcls_convnext_atto").eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        torch.testing.assert_close(torch.jit.script(model)(x), expected)
        features = create_feature_extractor(model, return_nodes=["stages.3"])(x)["stages.3"]
    assert features.shape == (1, 320, 1, 1)


# ------------------------------------------------------------------------------------------------ SNN delays

@pytest.fixture(scope="module")
def snn():
    torch.manual_seed(0)
    return timm.create_model("snn_delays_shd").eval()


def test_snn_refuses_non_finite_spikes(snn):
    for bad in (float("nan"), float("inf")):
        spikes = torch.zeros(2, 50, 140)
        spikes[1, 3, 7] = bad
        with pytest.raises(ValueError, match="^snn_delays_shd takes finite spike counts, got NaN or infinite"):
            snn(spikes)
    with pytest.raises(ValueError, match="finite spike counts"):
        snn(torch.full((2, 50, 140), float("nan")))


def test_snn_shapes_and_dtypes(snn):
    expected = re.escape("snn_delays_shd takes spikes (batch, time, 140) or (batch, 1, time, 140) in the model's "
                         "dtype (torch.float32; bool / integer counts are converted)")
    with pytest.raises(ValueError, match=expected + r", got shape \(50, 140\); add the batch dimension"):
        snn(torch.zeros(50, 140))
    with pytest.raises(ValueError, match=expected + r", got shape \(2, 50, 700\)"):
        snn(torch.zeros(2, 50, 700))
    with pytest.raises(ValueError, match=expected + r", got shape \(2, 0, 140\)"):
        snn(torch.zeros(2, 0, 140))
    with pytest.raises(TypeError, match=expected + r", got torch.float64: pass x.to\(torch.float32\)"):
        snn(torch.zeros(2, 50, 140, dtype=torch.float64))
    counts = torch.randint(0, 3, (2, 50, 140), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = snn(counts.float())
        torch.testing.assert_close(snn(counts.to(torch.uint8)), reference, rtol=0, atol=0)
        torch.testing.assert_close(snn(counts.to(torch.int64)), reference, rtol=0, atol=0)
        torch.testing.assert_close(snn((counts > 0)), snn((counts > 0).float()), rtol=0, atol=0)
        empty = snn(torch.zeros(0, 50, 140))
        assert empty.shape == (0, 20) and empty.dtype == torch.float32
        assert snn.forward_features(torch.zeros(0, 1, 50, 140)).shape == (0, 50 + 2 * 12, 256)


# ------------------------------------------------------------------------------------------------ OrthoGPT2

@pytest.fixture(scope="module")
def gpt2():
    torch.manual_seed(0)
    config = OrthoGPT2Config(vocab_size=61, n_positions=16, n_embd=16, n_layer=1, n_head=2, activation="hermite")
    return OrthoGPT2LMHeadModel(config).eval()


def test_ortho_gpt2_refuses_bad_token_ids(gpt2):
    with pytest.raises(ValueError, match=re.escape(
            "input_ids must be token ids in [0, 61) (the model's vocabulary, config.vocab_size), got ids from 0 "
            "to 61: check the tokenizer matches the model")):
        gpt2(torch.tensor([[0, 5, 61]]))
    with pytest.raises(ValueError, match=r"in \[0, 61\) .* got ids from -1 to 5"):
        gpt2(torch.tensor([[-1, 5]]))
    with pytest.raises(ValueError, match=re.escape(
            "input_ids holds an empty sequence (shape (2, 0)): pass at least one token")):
        gpt2(torch.zeros(2, 0, dtype=torch.long))
    with pytest.raises(ValueError, match=re.escape(
            "sequence of 17 tokens (0 cached + 17 new) is longer than the 16 positions this model has "
            "(config.n_positions): truncate it")):
        gpt2(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position_ids must be in \[0, 16\)"):
        gpt2(torch.zeros(1, 2, dtype=torch.long), position_ids=torch.tensor([[15, 16]]))
    # the same for the bare model and for inputs_embeds
    with pytest.raises(ValueError, match="longer than the 16 positions"):
        gpt2.transformer(inputs_embeds=torch.zeros(1, 17, 16))


def test_ortho_gpt2_generation_past_n_positions_is_refused(gpt2):
    ids = torch.zeros(1, 16, dtype=torch.long)
    with torch.no_grad():
        assert gpt2(ids).logits.shape == (1, 16, 61)   # exactly n_positions works
        cache = gpt2(ids[:, :15], use_cache=True).past_key_values
        assert gpt2(ids[:, :1], cache=cache, use_cache=True).logits.shape == (1, 1, 61)   # the cache grows in place
        with pytest.raises(ValueError, match=re.escape("sequence of 17 tokens (16 cached + 1 new)")):
            gpt2(ids[:, :1], cache=cache, use_cache=True)
