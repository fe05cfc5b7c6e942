"""Latency measurement: warm-up, per-call timings, mean and median, several variants interleaved.

    stats = time_variants({"full": run_full, "early": run_early}, items, warmup=3)
    stats["full"].mean_ms, stats["full"].median_ms

Variants are timed round-robin on the same items (item 1 with every variant, then item 2, ...)
so a machine whose load changes during the measurement slows every variant alike; the figures
that compare variants are then comparable even on a shared machine. Timing uses
`time.perf_counter` around each call; on CUDA the call is synchronised before the clock stops.
`torch_threads(n)` pins PyTorch's intra-op threads for the measurement (1 by default: a
per-image latency that does not depend on how many cores happen to be free).

ONNX Runtime is optional (`onnxruntime_available()`); `ort_session` opens a CPU session with
the same thread count.
"""
from __future__ import annotations

import contextlib
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class LatencyStats:
    mean_ms: float
    median_ms: float
    p90_ms: float
    min_ms: float
    n: int

    @classmethod
    def from_samples(cls, samples_ms: Sequence[float]) -> "LatencyStats":
        if not samples_ms:
            raise ValueError("no latency samples")
        ordered = sorted(samples_ms)
        p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
        return cls(round(statistics.fmean(ordered), 3), round(statistics.median(ordered), 3), round(p90, 3),
                   round(ordered[0], 3), len(ordered))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with `n` PyTorch intra-op threads (None: leave as is)."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_call(fn: Callable[[], Any]) -> float:
    """Milliseconds of one call (synchronised on CUDA)."""
    _sync()
    start = time.perf_counter()
    fn()
    _sync()
    return (time.perf_counter() - start) * 1000.0


def time_variants(variants: Mapping[str, Callable[[T], Any]], items: Sequence[T], warmup: int = 3,
                  repeats: int = 1) -> dict[str, LatencyStats]:
    """Per-item latency of each variant on every item, interleaved; `warmup` untimed passes over
    the first items per variant first. With repeats > 1 the item's sample is its median."""
    if not items:
        raise ValueError("no items to time")
    for i in range(warmup):
        for fn in variants.values():
            fn(items[i % len(items)])
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for item in items:
        for name, fn in variants.items():
            runs = [time_call(lambda: fn(item)) for _ in range(max(1, repeats))]
            samples[name].append(statistics.median(runs))
    return {name: LatencyStats.from_samples(s) for name, s in samples.items()}


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401 - deferred: the optional `onnx` extra
    except ImportError:
        return False
    return True


def ort_session(model: bytes | str, threads: int | None = 1) -> Any:
    """A CPU ONNX Runtime session (all graph optimisations on) with `threads` intra-op threads."""
    import onnxruntime as ort  # deferred: the optional `onnx` extra

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
