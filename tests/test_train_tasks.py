"""Trainer on the other task kinds: audio tagging (WAV clips), causal LM (a text file), SNN (spike arrays).

Each test writes its own tiny data set, trains a tiny model of the zoo for a few steps and checks that the
evaluation loss on the training rows went down.
"""
import importlib
import json
import os

import numpy as np
import pytest

from dcls_zoo.train import TrainConfig
from dcls_zoo.train.trainer import Trainer

COMMON = dict(eval_split="train", report_to="none", progress=False, seed=0, weight_decay=0.0)


def _loss_goes_down(cfg, model=None):
    trainer = Trainer(cfg, model=model)
    before = trainer.evaluate()
    results = trainer.train()
    return trainer, before, results


def write_audio_folder(root, rate=16000, seconds=1.5):
    """8 clips, 3 tags: a 440 Hz tone (0), a 3 kHz tone (1), noise (2); clip i carries a subset of the tags."""
    import soundfile

    rng = np.random.default_rng(0)
    t = np.arange(int(rate * seconds)) / rate
    sources = [np.sin(2 * np.pi * 440 * t), np.sin(2 * np.pi * 3000 * t), rng.normal(0, 0.5, t.shape)]
    tag_sets = [[0], [1], [2], [0, 1], [0, 2], [1, 2], [0, 1, 2], [0]]
    os.makedirs(root / "train", exist_ok=True)
    with open(root / "train" / "metadata.jsonl", "w") as f:
        for i, tags in enumerate(tag_sets):
            wave = sum(sources[k] for k in tags) / len(tags) * 0.5
            soundfile.write(root / "train" / f"clip{i}.wav", wave.astype(np.float32), rate)
            f.write(json.dumps({"file_name": f"clip{i}.wav", "labels": tags}) + "\n")
    return str(root)


def test_audio_tagging_trains_with_map(tmp_path):
    data = write_audio_folder(tmp_path / "audio")
    cfg = TrainConfig(
        task="audio", model="dcls_convnext_audio_tiny", dataset=data, label_column="labels", num_classes=3,
        model_kwargs=dict(waveform_input=True, dims=[8, 8, 16, 16], depths=[1, 1, 1, 1],
                          dcls_dilated_kernel_size=5, dcls_kernel_count=3),
        sample_rate=32000, clip_seconds=1.5, batch_size=4, epochs=4, lr=5e-3, mixup=0.5,
        output_dir=str(tmp_path / "out"), **COMMON)
    trainer, before, results = _loss_goes_down(cfg)
    assert results["eval"]["eval_loss"] < before["loss"]
    assert 0.0 <= results["eval"]["eval_mAP"] <= 1.0
    # the adapter resampled the 16 kHz clips to the model's 32 kHz
    assert trainer.train_set[0]["inputs"].shape == (48000,)
    assert trainer.train_set[0]["targets"].tolist() == [1.0, 0.0, 0.0]


def test_audio_multilabel_out_of_range_names_row(tmp_path):
    data = write_audio_folder(tmp_path / "audio")
    cfg = TrainConfig(task="audio", model="dcls_convnext_audio_tiny", dataset=data, label_column="labels",
                      num_classes=2, model_kwargs=dict(waveform_input=True), output_dir=str(tmp_path / "o"),
                      **COMMON)
    with pytest.raises(ValueError, match=r"class index 2 in row 2 is outside \[0, 2\)"):
        Trainer(cfg)


def _word_tokenizer(path, text):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(text.split()))
    vocab = {w: i for i, w in enumerate(["<unk>", "<eos>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")
    fast.save_pretrained(path)
    return str(path)


def test_causal_lm_trains_on_a_text_file(tmp_path):
    lines = ["the cat sat on the mat", "a dog ran in the park", "the cat ran on the mat"] * 12
    text = "\n".join(lines)
    (tmp_path / "corpus.txt").write_text(text)
    tokenizer = _word_tokenizer(tmp_path / "tok", text)
    from transformers import CONFIG_MAPPING

    # the zoo's GPT-2 variant when its classes are registered, else transformers' GPT-2 as a stand-in
    model_type = "ortho_gpt2" if "ortho_gpt2" in CONFIG_MAPPING else "gpt2"
    cfg = TrainConfig(
        task="lm", model=model_type, dataset=str(tmp_path / "corpus.txt"), tokenizer=tokenizer,
        block_size=16, model_kwargs=dict(n_layer=1, n_head=2, n_embd=16, n_positions=16), batch_size=4, epochs=10,
        lr=1e-2, output_dir=str(tmp_path / "out"), **COMMON)
    trainer, before, results = _loss_goes_down(cfg)
    assert results["eval"]["eval_loss"] < before["loss"] - 0.3, (before, results["eval"])
    assert results["eval"]["eval_perplexity"] == pytest.approx(np.exp(results["eval"]["eval_loss"]), rel=1e-6)


def test_lm_missing_text_column(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"body": ["a b c"] * 4}).save_to_disk(str(tmp_path / "d"))
    cfg = TrainConfig(task="lm", model="gpt2", dataset=str(tmp_path / "d"), output_dir=str(tmp_path / "o"),
                      **COMMON)
    with pytest.raises(ValueError, match="no column 'text'; its columns are body"):
        Trainer(cfg)


def write_spike_dataset(path, n=16, steps=20, channels=8):
    """Class 0 fires on channels 0-3, class 1 on channels 4-7; Poisson-like counts, variable lengths."""
    import datasets

    rng = np.random.default_rng(0)
    spikes, labels = [], []
    for i in range(n):
        label = i % 2
        rate = np.full(channels, 0.05)
        rate[label * 4:(label + 1) * 4] = 0.6
        length = steps - (i % 3)
        spikes.append((rng.random((length, channels)) < rate).astype(np.float32).tolist())
        labels.append(label)
    features = datasets.Features({"spikes": datasets.Sequence(datasets.Sequence(datasets.Value("float32"))),
                                  "label": datasets.ClassLabel(names=["low", "high"])})
    datasets.Dataset.from_dict({"spikes": spikes, "label": labels}, features=features).save_to_disk(str(path))
    return str(path)


def test_snn_delays_trains_with_sigma_schedule(tmp_path):
    data = write_spike_dataset(tmp_path / "spikes")
    cfg = TrainConfig(
        task="snn", model="snn_delays_shd", dataset=data,
        model_kwargs=dict(num_inputs=8, hidden_sizes=[16], max_delay=5, img_size=[20, 8]), batch_size=4, epochs=4,
        lr=1e-2, opt="adam", position_lr_scale=100.0, output_dir=str(tmp_path / "out"), **COMMON)
    trainer = Trainer(cfg)
    sig = [m.SIG for m in trainer.model.modules() if getattr(m, "SIG", None) is not None]
    sigma_start = float(sig[0].flatten()[0])
    before = trainer.evaluate()
    results = trainer.train()
    assert results["eval"]["eval_loss"] < before["loss"]
    # SIG decayed after each of the first epochs // 4 = 1 epoch, towards 0.23
    assert float(sig[0].flatten()[0]) < sigma_start
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert groups["dcls_positions"]["lr_scale"] == 100.0
    assert all(n.endswith(".P") for n in groups["dcls_positions"]["names"])  # frozen SIG is not optimised


def test_snn_events_columns_are_binned_like_snn_delays(tmp_path):
    """(times, units) event columns go through the SNN-delays binning: 10 ms frames, 4 channels summed in pairs."""
    import datasets

    rows = {"times": [[0.100, 0.105, 0.131], [0.0, 0.012]], "units": [[1, 1, 2], [0, 3]], "label": [0, 1]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "events"))
    cfg = TrainConfig(task="snn", model="snn_delays_shd", dataset=str(tmp_path / "events"), num_classes=2,
                      input_column="times,units", snn_channels=4, snn_channel_bins=2, batch_size=1, max_steps=1,
                      model_kwargs=dict(num_inputs=2, hidden_sizes=[4], max_delay=3, img_size=[4, 2]),
                      output_dir=str(tmp_path / "out"), **COMMON)
    trainer = Trainer(cfg)
    first = trainer.train_set[0]["inputs"].numpy()
    # events at 0, 5 and 31 ms after the first spike -> frames 0, 0, 3 (ceil(31 / 10) = 4 frames)
    np.testing.assert_array_equal(first, [[2, 0], [0, 0], [0, 0], [0, 1]])


def test_shd_event_files_bin_exactly_as_the_snn_reader(tmp_path):
    """A folder of SHD-layout HDF5 files trains through `datasets`; frames equal `SpikingAudioDataset`'s."""
    h5py = importlib.import_module("h5py")
    from dcls_zoo.data.spikes import SpikingAudioDataset

    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 4)):
        with h5py.File(tmp_path / f"shd_{split}.h5", "w") as f:
            grp = f.create_group("spikes")
            times = grp.create_dataset("times", (n,), dtype=h5py.vlen_dtype(np.dtype("float16")))
            units = grp.create_dataset("units", (n,), dtype=h5py.vlen_dtype(np.dtype("uint16")))
            for i in range(n):
                k = int(rng.integers(20, 60))
                times[i] = np.sort(rng.uniform(0.0, 0.3, k)).astype("float16")
                units[i] = rng.integers(0, 700, k).astype("uint16")
            f.create_dataset("labels", data=np.arange(n, dtype="uint16") % 3)
    cfg = TrainConfig(
        task="snn", model="snn_delays_shd", dataset=str(tmp_path), input_column="times,units", snn_channels=700,
        snn_channel_bins=5, model_kwargs=dict(hidden_sizes=[8], max_delay=5), batch_size=2, max_steps=2,
        output_dir=str(tmp_path / "out"), report_to="none", progress=False)
    trainer = Trainer(cfg)
    assert trainer.eval_split == "test" and trainer.adapter.num_classes == 3
    reference = SpikingAudioDataset(tmp_path / "shd_train.h5")
    for i in range(6):
        np.testing.assert_array_equal(trainer.train_set[i]["inputs"].numpy(), reference[i][0].numpy())
    results = trainer.train()
    assert np.isfinite(results["eval"]["eval_loss"])
