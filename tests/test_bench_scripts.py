"""The benchmark scripts' bookkeeping: tables written idempotently, one crashing pair costs one row, layouts per pair.

The measurements themselves are not timed here (speed goals live in `scripts/bench_*.py` and BENCHMARKS.md).
"""
import argparse
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts"))
import bench_models  # noqa: E402  (scripts/)
from bench_common import write_marked_section  # noqa: E402

BEGIN, END = "<!-- t:begin -->", "<!-- t:end -->"


def test_marked_section_is_replaced_in_place_and_the_rest_kept(tmp_path):
    path = tmp_path / "BENCH.md"
    path.write_text("# Title\n\nhand-written intro\n")
    write_marked_section(f"{BEGIN}\nfirst\n{END}", path, BEGIN, END)
    once = path.read_text()
    assert once.startswith("# Title\n\nhand-written intro\n") and "first" in once
    write_marked_section(f"{BEGIN}\nfirst\n{END}", path, BEGIN, END)
    assert path.read_text() == once, "writing the same table twice must not change the file"
    path.write_text(once + "\nnotes after the table\n")
    write_marked_section(f"{BEGIN}\nsecond\n{END}", path, BEGIN, END)
    text = path.read_text()
    assert "second" in text and "first" not in text and text.count(BEGIN) == 1
    assert text.endswith("\nnotes after the table\n")


def _row(name):
    row = dict(model=name, baseline=bench_models.PAIRS[name], input="1x3x224x224", format="channels_last")
    for mode in ("train", "eval"):
        for k, t in (("dcls", 1.2), ("base", 1.0)):
            row[f"{mode}_{k}"] = row[f"{mode}_{k}_wall"] = t
    row["eval_frozen"] = 1.1
    return row


def test_a_crashing_pair_costs_its_row_not_the_table(monkeypatch, tmp_path):
    names = ["dcls_convnext_tiny", "dcls_fastvit_sa24", "dcls_caformer_s18"]
    commands = []

    def fake_run(cmd):
        commands.append(cmd)
        name = cmd[cmd.index("--pair") + 1]
        if name == "dcls_fastvit_sa24":
            return SimpleNamespace(returncode=-11)   # what a segfault in a library looks like from outside
        Path(cmd[cmd.index("--row-json") + 1]).write_text(json.dumps(_row(name)))
        return SimpleNamespace(returncode=0)

    monkeypatch.setattr(bench_models.subprocess, "run", fake_run)
    args = argparse.Namespace(batch=2, repeats=1, device="cpu", autocast_bf16=False, threads=None)
    rows = bench_models.measure(names, args)
    monkeypatch.undo()   # platform.processor() in the table header runs a subprocess itself
    assert [r["model"] for r in rows] == names
    assert rows[1] == dict(model="dcls_fastvit_sa24", baseline="fastvit_sa24", failed="killed by SIGSEGV")
    assert all(c[c.index("--batch") + 1] == "2" for c in commands) and len(commands) == 3
    text = bench_models.to_markdown(rows, args, "0.0", BEGIN, END)
    lines = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| dcls_")}
    assert "failed: killed by SIGSEGV" in lines["| dcls_fastvit_sa24"]
    cells = lines["| dcls_convnext_tiny"].split(" | ")
    assert cells[6] == cells[9] == "1.20" and cells[10] == "1.10"   # train, eval and eval frozen ratios
    assert lines["| dcls_convnext_tiny"].endswith("met / MISSED |")   # 1.2 <= 1.25 train; 1.2 > 1.10 eval


def test_fastvit_pair_runs_in_nchw_on_the_cpu_only():
    assert bench_models.memory_format_of("dcls_fastvit_sa24", "cpu") == torch.contiguous_format
    assert bench_models.memory_format_of("dcls_fastvit_sa24", "cuda") == torch.channels_last
    assert bench_models.memory_format_of("dcls_convnext_tiny", "cpu") == torch.channels_last
