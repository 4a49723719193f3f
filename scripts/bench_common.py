"""Measurement helpers shared by `scripts/bench_*.py` and the memory tests."""
from __future__ import annotations

import time
from typing import Callable, Iterable

import torch


def saved_bytes_for_backward(fn: Callable[[], object], exclude: Iterable[torch.Tensor] = ()) -> tuple[int, object]:
    """Bytes that autograd keeps for backward while running `fn` (unique storages, excluding `exclude`, e.g. the
    input and parameters, which exist anyway), and `fn`'s result.

    Deterministic (no timing, no allocator statistics); on the CPU it is what grows a training step's peak memory
    beyond activations that a plain convolution saves too.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in skip:
            seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        result = fn()
    return sum(seen.values()), result


def cuda_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory allocated by `fn` beyond what was allocated before it."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def best_time(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> float:
    """Minimum wall time in seconds over `repeats` runs (after `warmup` runs)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def alternating_times(
    fns: dict[str, Callable[[], object]], repeats: int = 5, warmup: int = 1
) -> dict[str, dict[str, float]]:
    """Median process CPU time and wall time (seconds) of each of `fns`, run in turns (a, b, c, a, b, c, ...).

    Alternating in one process spreads other load on a shared machine evenly over the compared variants; process
    CPU time (all threads of this process) counts only the work done here, not the time spent waiting for a core.
    """
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in fns}
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            sync()
            cpu, wall = time.process_time(), time.perf_counter()
            fn()
            sync()
            samples[name].append((time.process_time() - cpu, time.perf_counter() - wall))
    out = {}
    for name, pairs in samples.items():
        cpu_times, wall_times = sorted(p[0] for p in pairs), sorted(p[1] for p in pairs)
        out[name] = {"cpu": cpu_times[len(pairs) // 2], "wall": wall_times[len(pairs) // 2]}
    return out


def write_marked_section(section: str, path, begin: str, end: str) -> None:
    """Replace the text between the `begin`/`end` markers of the Markdown file `path` with `section` (which holds
    the markers), or append it; the rest of the file is kept."""
    from pathlib import Path

    path = Path(path)
    empty = "# Benchmarks\n\nWritten by `scripts/bench_*.py`; rerun them to update.\n"
    text = path.read_text() if path.exists() else empty
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)
