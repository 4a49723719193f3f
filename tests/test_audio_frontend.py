"""Audio front-ends vs the originals' pipelines (torchlibrosa, librosa, torchaudio), SpecAugment, pooling, mAP,
WAV reading."""
import importlib
import math

import numpy as np
import pytest
import torch

from dcls_zoo.layers.audio import (
    AUDIOSET_CONVNEXT_FRONTEND,
    DCLS_AUDIO_FRONTEND,
    FreqMeanTimeMaxMeanPool,
    LogMelFrontend,
    SpecAugment,
)
from dcls_zoo.layers.metrics import average_precision_per_class, mean_average_precision

SR = 32000
REL_TOL = 1e-4                             # relative error allowed on mel power
DB_TOL = 10 * math.log10(1 + REL_TOL)      # the same, in dB (4.3e-4 dB)


def _signals(seconds: float = 1.0, dtype=torch.float64) -> dict[str, torch.Tensor]:
    """Real-looking test signals: a chirp, noise, silence, and a harmonic burst with silence around it."""
    g = torch.Generator().manual_seed(0)
    n = int(seconds * SR)
    t = torch.arange(n, dtype=torch.float64) / SR
    chirp = 0.5 * torch.sin(2 * math.pi * (60 * t + (12000 - 60) / (2 * seconds) * t ** 2))
    noise = 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    burst = torch.zeros(n, dtype=torch.float64)
    lo, hi = n // 3, 2 * n // 3
    envelope = torch.sin(math.pi * torch.linspace(0, 1, hi - lo, dtype=torch.float64)) ** 2
    voiced = sum(torch.sin(2 * math.pi * 220 * k * t[lo:hi]) / k for k in range(1, 13))   # a harmonic 'vowel'
    burst[lo:hi] = 0.2 * envelope * voiced * (1 + 0.5 * torch.sin(2 * math.pi * 4 * t[lo:hi]))
    return {name: x.to(dtype) for name, x in
            dict(chirp=chirp, noise=noise, silence=torch.zeros(n, dtype=torch.float64), burst=burst).items()}


def _assert_db_close(ours_db: np.ndarray, ref_db: np.ndarray, within_db: float, tol_db: float = DB_TOL) -> None:
    """|dB difference| <= tol_db on every bin within `within_db` of the clip's peak (lower bins are rounding noise
    of the reference's own float32 arithmetic); silent clips must sit at the -100 dB floor."""
    ours_db, ref_db = np.asarray(ours_db, np.float64), np.asarray(ref_db, np.float64)
    assert ours_db.shape == ref_db.shape
    peak = ref_db.max()
    if np.all(ref_db == peak):   # silence: both at 10 * log10(amin), not -inf
        assert peak == -100.0
        np.testing.assert_allclose(ours_db, ref_db, rtol=0, atol=tol_db)
        return
    mask = ref_db >= peak - within_db
    assert mask.sum() >= 200   # the comparison covers a real share of the bins
    err = np.abs(ours_db - ref_db)[mask].max()
    assert err <= tol_db, f"max |dB error| {err:.2e} > {tol_db:.2e} within {within_db} dB of the peak"


# ---------------------------------------------------------------------------------------------------------------
# recipe (a): the AudioSet ConvNeXt front-end vs torchlibrosa (the original's own extractor)
# ---------------------------------------------------------------------------------------------------------------

tl_stft = importlib.import_module("torchlibrosa.stft")


def _torchlibrosa_recipe_a():
    spectrogram = tl_stft.Spectrogram(n_fft=1024, hop_length=320, win_length=1024, window="hann", center=True,
                                      pad_mode="reflect", freeze_parameters=True)
    logmel = tl_stft.LogmelFilterBank(sr=SR, n_fft=1024, n_mels=224, fmin=50, fmax=14000, ref=1.0, amin=1e-10,
                                      top_db=None, freeze_parameters=True)
    return spectrogram, logmel


@pytest.mark.parametrize("dtype, within_db", [(torch.float64, 80.0), (torch.float32, 60.0)])
def test_recipe_a_log_mel_equals_torchlibrosa(dtype, within_db):
    spectrogram, logmel = _torchlibrosa_recipe_a()
    spectrogram, logmel = spectrogram.to(dtype), logmel.to(dtype)
    ours = LogMelFrontend(**dict(AUDIOSET_CONVNEXT_FRONTEND, normalization=None)).to(dtype).eval()
    for name, x in _signals(dtype=dtype).items():
        with torch.no_grad():
            ref = logmel(spectrogram(x[None]))           # (1, 1, T, 224)
            got = ours(x[None])
        assert got.shape == ref.shape == (1, 1, 1 + x.numel() // 320, 224), name
        assert got.dtype == dtype
        _assert_db_close(got.numpy(), ref.numpy(), within_db)
    with torch.no_grad():
        silence = ours(torch.zeros(1, 4000, dtype=dtype))
    assert torch.all(silence == -100.0)   # 10 * log10(amin), not -inf


def test_recipe_a_batchnorm_over_mel_bins_matches_the_original_bn0():
    spectrogram, logmel = _torchlibrosa_recipe_a()
    ours = LogMelFrontend(**AUDIOSET_CONVNEXT_FRONTEND).double().eval()
    bn0 = torch.nn.BatchNorm2d(224).double().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for bn in (bn0, ours.norm):   # same random statistics and affine parameters in both
            torch.manual_seed(2)
            bn.running_mean.normal_(-40, 5), bn.running_var.uniform_(50, 200)
            bn.weight.normal_(1, 0.1), bn.bias.normal_(0, 0.1)
        x = 0.1 * torch.randn(2, 16000, generator=g, dtype=torch.float64)
        ref = bn0(logmel.double()(spectrogram.double()(x)).transpose(1, 3)).transpose(1, 3)
        got = ours(x)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)   # torchlibrosa keeps float32 DFT weights


def test_mel_filter_banks_equal_librosa():
    librosa = importlib.import_module("librosa")
    slaney = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=224, fmin=50, fmax=14000).T
    htk = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128, fmin=50, fmax=14000, htk=True, norm=None).T
    np.testing.assert_array_equal(LogMelFrontend(**AUDIOSET_CONVNEXT_FRONTEND).mel_filters.numpy(), slaney)
    np.testing.assert_allclose(LogMelFrontend(**DCLS_AUDIO_FRONTEND).mel_filters.numpy(), htk, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------------------------
# recipe (b): the DCLS-Audio front-end vs librosa (independent) and torchaudio (the original's pipeline)
# ---------------------------------------------------------------------------------------------------------------

def _librosa_recipe_b(x: np.ndarray) -> np.ndarray:
    librosa = importlib.import_module("librosa")
    power = np.abs(librosa.stft(x, n_fft=1024, hop_length=320, window="hann", center=True, pad_mode="reflect")) ** 2
    mel = librosa.filters.mel(sr=SR, n_fft=1024, n_mels=128, fmin=50, fmax=14000, htk=True, norm=None) @ power
    return librosa.power_to_db(mel, ref=1.0, amin=1e-10, top_db=None)      # (128, T)


@pytest.mark.parametrize("dtype, within_db", [(torch.float64, 120.0), (torch.float32, 60.0)])
def test_recipe_b_log_mel_equals_librosa(dtype, within_db):
    ours = LogMelFrontend(**DCLS_AUDIO_FRONTEND).to(dtype).eval()
    for name, x in _signals().items():
        ref_db = _librosa_recipe_b(x.numpy())
        with torch.no_grad():
            got = ours(x.to(dtype)[None])
        assert got.shape == (1, 1, 128, 1 + x.numel() // 320), name      # mel on H, time on W
        got_db = got[0, 0].double().numpy() * 30.5735 - 18.2696          # undo the fixed normalisation
        _assert_db_close(got_db, ref_db, within_db)
    x = _signals()["noise"]
    with torch.no_grad():
        got = ours(x.to(dtype)[None])[0, 0].double().numpy()
    np.testing.assert_allclose(got, (_librosa_recipe_b(x.numpy()) + 18.2696) / 30.5735, rtol=1e-4, atol=1e-5)


def test_recipe_b_log_mel_equals_torchaudio_pipeline():
    transforms = importlib.import_module("torchaudio.transforms")
    pipeline = torch.nn.Sequential(
        transforms.Spectrogram(n_fft=1024, hop_length=320, power=2),
        transforms.MelScale(n_mels=128, sample_rate=SR, f_min=50, f_max=14000, n_stft=513),
        transforms.AmplitudeToDB(),
    )
    ours = LogMelFrontend(**DCLS_AUDIO_FRONTEND).eval()
    for name, x in _signals(dtype=torch.float32).items():
        with torch.no_grad():
            ref = pipeline(x[None])[0]
            got = ours(x[None])[0, 0] * 30.5735 - 18.2696
        # torchaudio builds its HTK filters in float32 (they differ from librosa's by up to 1.2e-5), hence 5e-4.
        _assert_db_close(got.numpy(), ref.numpy(), within_db=60.0, tol_db=10 * math.log10(1 + 5e-4))


def test_ten_second_clip_gives_1001_frames_in_both_layouts():
    x = torch.zeros(1, 10 * SR)
    assert LogMelFrontend(**AUDIOSET_CONVNEXT_FRONTEND).eval()(x).shape == (1, 1, 1001, 224)
    assert LogMelFrontend(**DCLS_AUDIO_FRONTEND)(x).shape == (1, 1, 128, 1001)
    assert LogMelFrontend(**DCLS_AUDIO_FRONTEND)(x[:, None]).shape == (1, 1, 128, 1001)   # (B, 1, samples)


def test_top_db_clamps_per_clip():
    frontend = LogMelFrontend(**dict(DCLS_AUDIO_FRONTEND, normalization=None, top_db=80.0))
    x = torch.stack([_signals()["chirp"].float(), 1e-3 * _signals()["noise"].float()])
    y = frontend(x)
    for clip in y:
        assert clip.min() >= clip.max() - 80.0 - 1e-4


def test_meta_device_construction_then_buffer_init():
    with torch.device("meta"):
        frontend = LogMelFrontend(**DCLS_AUDIO_FRONTEND)
    assert frontend.mel_filters.is_meta
    frontend = frontend.to_empty(device="cpu")
    frontend.init_non_persistent_buffers()
    torch.testing.assert_close(frontend.mel_filters, LogMelFrontend(**DCLS_AUDIO_FRONTEND).mel_filters)


# ---------------------------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("x, error, match", [
    (torch.zeros(2, 2, 4000), ValueError, "mono"),
    (torch.zeros(4000), ValueError, "batch dimension"),
    (torch.zeros(1, 0), ValueError, "too short"),
    (torch.zeros(1, 512), ValueError, "too short"),
    (torch.tensor([[0.0, float("nan")] * 1000]), ValueError, "NaN"),
    (torch.zeros(1, 4000, dtype=torch.int16), TypeError, "floating-point"),
    (np.zeros((1, 4000), np.float32), TypeError, "torch.Tensor"),
])
def test_bad_waveforms_raise_clear_errors(x, error, match):
    with pytest.raises(error, match=match):
        LogMelFrontend(**DCLS_AUDIO_FRONTEND)(x)


def test_wrong_sample_rate_is_refused_when_stated():
    frontend = LogMelFrontend(**DCLS_AUDIO_FRONTEND)
    frontend(torch.zeros(1, 4000), sample_rate=32000)
    with pytest.raises(ValueError, match="16000 Hz.*32000 Hz"):
        frontend(torch.zeros(1, 4000), sample_rate=16000)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="f_max"):
        LogMelFrontend(sample_rate=16000, f_max=14000.0)
    with pytest.raises(ValueError, match="layout"):
        LogMelFrontend(layout="nchw")
    with pytest.raises(ValueError, match="mel_scale"):
        LogMelFrontend(mel_scale="kaldi")


# ---------------------------------------------------------------------------------------------------------------
# SpecAugment and pooling
# ---------------------------------------------------------------------------------------------------------------

def _stripes(keep: torch.Tensor) -> list[tuple[int, int]]:
    """Runs of False in a 1-D bool tensor as (start, length)."""
    runs, start = [], None
    for i, k in enumerate(keep.tolist() + [True]):
        if not k and start is None:
            start = i
        elif k and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def test_spec_augment_zeroes_at_most_the_configured_stripes():
    torch.manual_seed(0)
    aug = SpecAugment(time_width=64, time_stripes=2, freq_width=28, freq_stripes=2, time_dim=2, freq_dim=3)
    x = torch.randn(64, 1, 1001, 224) + 10.0        # no zeros of its own
    widest = {2: 0, 3: 0}
    assert aug.eval()(x) is x                        # identity in eval
    y = aug.train()(x)
    assert not torch.equal(y, x) and torch.all(x != 0)   # not in place
    for clip in y[:, 0]:
        zero = clip == 0
        time_dropped, freq_dropped = zero.all(dim=1), zero.all(dim=0)
        # every zero lies in a dropped row or a dropped column
        assert torch.equal(zero, time_dropped[:, None] | freq_dropped[None, :])
        for dim, dropped, width in ((2, time_dropped, 64), (3, freq_dropped, 28)):
            runs = _stripes(~dropped)
            assert len(runs) <= 2 and all(length < 2 * width for _, length in runs)
            widest[dim] = max([widest[dim]] + [length for _, length in runs])
    assert 40 <= widest[2] <= 126 and 15 <= widest[3] <= 54   # stripes are drawn from [0, width) each


def test_spec_augment_keeps_gradients():
    x = torch.randn(2, 1, 100, 64, requires_grad=True)
    SpecAugment(20, 2, 10, 2).train()(x).sum().backward()
    assert x.grad is not None and set(x.grad.unique().tolist()) <= {0.0, 1.0}


def test_freq_mean_time_maxmean_pool():
    x = torch.randn(2, 5, 31, 7)
    expected = x.mean(3).amax(2) + x.mean(3).mean(2)
    torch.testing.assert_close(FreqMeanTimeMaxMeanPool()(x)[:, :, 0, 0], expected)
    transposed = FreqMeanTimeMaxMeanPool(time_dim=3, freq_dim=2)(x.transpose(2, 3))
    torch.testing.assert_close(transposed, FreqMeanTimeMaxMeanPool()(x))


# ---------------------------------------------------------------------------------------------------------------
# mAP
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ties", [False, True])
def test_mean_average_precision_equals_sklearn(ties):
    sklearn_metrics = importlib.import_module("sklearn.metrics")
    g = torch.Generator().manual_seed(3)
    scores = torch.randn(300, 40, generator=g)
    if ties:
        scores = (scores * 2).round() / 2
    targets = (torch.rand(300, 40, generator=g) < 0.08).int()
    targets[:, :3] = 0                                   # classes without positives are left out
    ap = average_precision_per_class(scores, targets)
    has_pos = targets.sum(0) > 0
    ref = sklearn_metrics.average_precision_score(targets[:, has_pos].numpy(), scores[:, has_pos].numpy(), average=None)
    np.testing.assert_allclose(ap[has_pos].numpy(), ref, rtol=1e-12, atol=1e-12)
    assert torch.isnan(ap[~has_pos]).all()
    assert mean_average_precision(scores, targets) == pytest.approx(ref.mean(), abs=1e-12)
    # only the order matters: probabilities give the same mAP as logits
    probabilities = torch.sigmoid(scores.double())
    assert mean_average_precision(probabilities, targets.bool()) == pytest.approx(ref.mean(), abs=1e-12)


def test_mean_average_precision_perfect_and_bad_input():
    targets = torch.tensor([[1, 0], [0, 1], [1, 0]])
    assert mean_average_precision(targets.float(), targets) == 1.0
    with pytest.raises(ValueError, match="binary"):
        mean_average_precision(torch.rand(3, 2), torch.full((3, 2), 0.9))
    with pytest.raises(ValueError, match="shape"):
        mean_average_precision(torch.rand(3, 2), torch.ones(3, 3))
    with pytest.raises(ValueError, match="NaN"):
        mean_average_precision(torch.tensor([[float("nan"), 0.0]]), torch.tensor([[1, 0]]))
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(torch.rand(3, 2), torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------------------------
# WAV reading
# ---------------------------------------------------------------------------------------------------------------

def test_wav_round_trip_and_24_bit_files(tmp_path):
    from dcls_zoo.data.audio_io import pad_or_crop, read_audio, split_clips, to_mono, write_wav

    x = torch.stack([_signals(0.2)["chirp"].float(), 0.5 * _signals(0.2)["noise"].float()])
    write_wav(tmp_path / "a.wav", x, SR)
    y, rate = read_audio(tmp_path / "a.wav")
    assert rate == SR and y.shape == x.shape and y.dtype == torch.float32
    assert (y - x).abs().max() <= 1 / 32768
    soundfile = importlib.import_module("soundfile")
    soundfile.write(tmp_path / "b24.wav", x.T.numpy(), SR, subtype="PCM_24")
    y24, _ = read_audio(tmp_path / "b24.wav")          # read by the standard library path
    ref, _ = soundfile.read(tmp_path / "b24.wav", dtype="float32", always_2d=True)
    np.testing.assert_allclose(y24.numpy(), ref.T, atol=1e-7)
    soundfile.write(tmp_path / "f.wav", x.T.numpy(), SR, subtype="FLOAT")   # float WAV: soundfile fallback
    torch.testing.assert_close(read_audio(tmp_path / "f.wav")[0], x)
    assert to_mono(x).shape == (x.shape[1],)
    assert pad_or_crop(x, 10).shape == (2, 10) and pad_or_crop(x, 9000)[:, 6400:].abs().sum() == 0
    clips = split_clips(to_mono(x), 2500)
    assert clips.shape == (3, 2500) and torch.equal(clips.flatten()[:6400], to_mono(x))
    with pytest.raises(FileNotFoundError):
        read_audio(tmp_path / "missing.wav")
