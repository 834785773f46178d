"""What the benchmarks share: a wall/CPU clock, the machine's load line and a roofline probe of the same run.

The roofline probe measures the two bounds a transformer step can hit on this machine, with torch's own kernels:
- GEMV bandwidth (GB/s): y = W x over a matrix far larger than the last-level cache, so every byte of W comes
  from memory once; a cached decoding step at batch 1 reads every weight once, so its floor is bytes / this.
- GEMM throughput (GFLOP/s): a square fp32 matrix product; a full recomputation (the original's sampler) or a
  prefill is compute-bound, so its floor is FLOPs / this.
Each is the best of a few repeats (the machine may be shared: the best is the least disturbed); benchmarks
probe before and after what they time and keep the better figures (`Roofline.best`).
"""
from __future__ import annotations

import os
import resource
import time
from dataclasses import dataclass
from functools import partial
from typing import Self

import torch


class Clock:
    """Wall and process-CPU seconds of one block."""

    def __enter__(self) -> Self:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu

    def __str__(self) -> str:
        return f"{self.wall:.2f} s wall / {self.cpu:.2f} s CPU"


def load_line() -> str:
    """The machine's 1/5/15-minute load averages and CPU count, for every benchmark's header."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


@dataclass
class Roofline:
    """Measured bounds of one device at the current thread count."""

    gemv_gbs: float     # bytes of a matrix streamed per second by y = W x
    gemm_gflops: float  # fp32 (or `dtype`) multiply-adds x 2 per second of a square matrix product
    dtype: torch.dtype
    threads: int

    def memory_seconds(self, nbytes: float) -> float:
        """The floor of reading `nbytes` once."""
        return nbytes / (self.gemv_gbs * 1e9)

    def compute_seconds(self, flops: float) -> float:
        """The floor of `flops` floating-point operations."""
        return flops / (self.gemm_gflops * 1e9)

    def best(self, other: Roofline) -> Roofline:
        """The higher of two probes' figures (taken before and after a measurement: the less disturbed one)."""
        return Roofline(max(self.gemv_gbs, other.gemv_gbs), max(self.gemm_gflops, other.gemm_gflops), self.dtype,
                        self.threads)

    def __str__(self) -> str:
        return (f"roofline probe ({str(self.dtype).removeprefix('torch.')}, {self.threads} thread(s)): GEMV "
                f"{self.gemv_gbs:.1f} GB/s, GEMM {self.gemm_gflops:.0f} GFLOP/s")


@torch.inference_mode()
def roofline(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, gemv_mib: int = 256,
             gemm_n: int = 2048, repeats: int = 8) -> Roofline:
    """GEMV bandwidth over a `gemv_mib` MiB matrix and GEMM throughput of two n x n matrices (module docstring).

    On a GPU pass a matrix well beyond its L2 (e.g. 1024 MiB) and a larger n (e.g. 8192)."""
    device = torch.device(device)
    side = int((gemv_mib * 2**20 / torch.finfo(dtype).bits * 8) ** 0.5)
    gemv = _best_seconds(partial(torch.mv, torch.randn(side, side, device=device, dtype=dtype),
                                 torch.randn(side, device=device, dtype=dtype)), device, repeats)
    gemm = _best_seconds(partial(torch.mm, torch.randn(gemm_n, gemm_n, device=device, dtype=dtype),
                                 torch.randn(gemm_n, gemm_n, device=device, dtype=dtype)), device, repeats)
    nbytes = side * side * torch.finfo(dtype).bits / 8
    return Roofline(nbytes / gemv / 1e9, 2 * gemm_n**3 / gemm / 1e9, dtype, torch.get_num_threads())
