"""bench-gpu's training part: a training step of the paper's codebook and transformer as the loop runs it.

Per model, in one run:
- the original's procedure, the baseline: fp32, eager, non-fused Adam(W), the paper's per-GPU batch;
- `trainer=gpu` as a user gets it (conf/trainer/gpu.yaml: bf16 autocast and its speed options, applied by the loop's
  own `pipeline.train.loop.speed_up` / `optimizer_options`), at the paper's batch;
- the same at the largest batch whose fp32 step fits an 80 GB card (peak memory measured at two batches, fitted
  linearly, then checked), and fp32 eager at that batch (on CUDA: the smoke mode has no memory to fit).
Each: milliseconds per step (best of a few after a warm-up), samples/s, peak memory and the share of the card's bf16
peak (MFU: the step's FLOPs counted by torch's FlopCounterMode, forward and backward, matrix products and
convolutions). `BENCH_GPU_COMPILE=1` adds `trainer.compile=true` at the largest batch (minutes of compiling).
"""
from __future__ import annotations

import contextlib
import copy
import os
import time
from typing import Any

import torch
from omegaconf import OmegaConf

from pipeline.bench.codebook_step import training_step
from pipeline.build.codebook import build_codebook
from pipeline.config.presets import preset, preset_dict
from pipeline.media.mel import N_MELS
from pipeline.train.loop import optimizer_options, speed_up

CARD_BYTES = 80e9  # "fits an 80 GB card": the largest batch whose fp32 step stays under LIMIT_SHARE of it
LIMIT_SHARE = 0.9  # headroom for the allocator's fragmentation and the CUDA context
# dense bf16 tensor-core peaks (TFLOP/s) from the vendors' data sheets, matched in order against the card's name;
# another card is measured against the roofline probe's bf16 GEMM rate instead
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0))


def card_peak_flops(name: str, measured_gemm_flops: float) -> tuple[float, str]:
    """(bf16 peak FLOP/s, where it comes from) for a card's name."""
    for key, tflops in BF16_PEAK_TFLOPS:
        if key in name:
            return tflops * 1e12, f"{key} data sheet, dense bf16"
    return measured_gemm_flops, "measured bf16 GEMM rate (no data-sheet figure for this card)"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_bytes(device: torch.device) -> float:
    return float(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else float("nan")


@contextlib.contextmanager
def _no_tf32():
    """Restores the TF32 flags that `speed_up` sets process-wide."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def original_options(gpu: dict[str, Any]) -> dict[str, Any]:
    """The original's procedure: every speed option off (fp32 eager, a loop over tensors in Adam)."""
    return {**gpu, "mixed_precision": "no", "compile": False, "fused_optimizer": False, "channels_last": False,
            "tf32": False}


class Step:
    """One model's training step at a batch under trainer options: built fresh (weights, optimisers) on `device`."""

    def __init__(self, what: str, sizes: dict, model, batch: int, options: dict[str, Any], device: torch.device):
        self.what, self.batch, self.device = what, batch, device
        self.amp = torch.bfloat16 if options["mixed_precision"] == "bf16" else None
        torch.manual_seed(0)
        if what == "codebook":
            cfg = preset("codebook", sizes["codebook"])
            if OmegaConf.is_missing(cfg.loss, "lpaps_trunk"):  # the paper preset: a random trunk, no stats (same cost)
                cfg.loss.lpaps_trunk, cfg.loss.lpaps_stats = "random", None
            self.model = build_codebook(cfg.model, cfg.loss).to(device).train()
            self.global_step = int(cfg.loss.disc_start)  # past disc_start: every term is live
            speed_up([self.model, self.model.loss], options)
            fused = optimizer_options(options)
            self.opt_ae = torch.optim.Adam(list(self.model.autoencoder_parameters()), lr=1e-6, betas=(0.5, 0.9),
                                           **fused)
            self.opt_d = torch.optim.Adam(self.model.loss.discriminator.parameters(), lr=1e-6, betas=(0.5, 0.9),
                                          **fused)
            self.x = torch.rand(batch, 1, N_MELS, sizes["crop_len"], device=device) * 2 - 1
        else:
            self.model = copy.deepcopy(model).train()
            speed_up([self.model], options)
            H, W = self.model.first_stage_permuter.H, self.model.first_stage_permuter.W
            groups = self.model.transformer_param_groups(0.01)
            self.opt = torch.optim.AdamW(groups, lr=1e-6, betas=(0.9, 0.95), **optimizer_options(options))
            self.tokens = torch.randint(0, self.model.transformer.vocab_size, (batch, H * W), device=device)
            self.feats = torch.rand(batch, sizes["feat_depth"], sizes["S"], device=device)

    def __call__(self) -> float:
        if self.what == "codebook":
            self.global_step += 1
            return training_step(self.model, self.model, self.opt_ae, self.opt_d, self.x, self.global_step, self.amp)
        amp = torch.autocast(self.device.type, dtype=self.amp) if self.amp else contextlib.nullcontext()
        with amp:
            loss = self.model(None, self.feats, self.tokens)  # the task's call: cached tokens, x not read
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())

    def flops(self) -> float:
        """FLOPs of one step (forward and backward), counted by torch."""
        from torch.utils.flop_counter import FlopCounterMode

        counter = FlopCounterMode(display=False)
        with counter:
            self()
        return float(counter.get_total_flops())


def measure(what: str, sizes: dict, model, batch: int, options: dict[str, Any], device: torch.device,
            steps: int, count_flops: bool = False) -> dict[str, Any]:
    """Warm-up, then the best of `steps` timed steps: seconds, samples/s, peak bytes, loss (and with `count_flops`
    the FLOPs of one sample's step)."""
    with _no_tf32():
        step = Step(what, sizes, model, batch, options, device)
        start = time.perf_counter()
        step()  # warm-up (and compiling, with trainer.compile)
        _sync(device)
        warmup = time.perf_counter() - start
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        times, loss = [], float("nan")
        for _ in range(steps):
            _sync(device)
            start = time.perf_counter()
            loss = step()
            _sync(device)
            times.append(time.perf_counter() - start)
        peak = _peak_bytes(device)
        flops = step.flops() / batch if count_flops else float("nan")
    del step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    seconds = min(times)
    return {"batch": batch, "seconds": seconds, "samples_per_s": batch / seconds, "peak_bytes": peak,
            "loss": loss, "flops_per_sample": flops, "warmup_s": warmup}


def largest_batch(what: str, sizes: dict, model, options: dict[str, Any], device: torch.device) -> int:
    """The largest batch whose step under `options` peaks below LIMIT_SHARE x CARD_BYTES (on CUDA): peaks at the
    paper's batch and twice it, fitted linearly, then checked (lowered until it fits or runs out of memory no more)."""
    base = sizes[f"{what}_batch"]
    peaks = [measure(what, sizes, model, b, options, device, 1)["peak_bytes"] for b in (base, 2 * base)]
    per_item = max((peaks[1] - peaks[0]) / base, 1.0)
    batch = max(base, int((LIMIT_SHARE * CARD_BYTES - (peaks[0] - per_item * base)) / per_item))
    while batch > base:
        try:
            if measure(what, sizes, model, batch, options, device, 1)["peak_bytes"] <= LIMIT_SHARE * CARD_BYTES:
                return batch
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
        batch = int(batch * 0.85)
    return base


def training(model, sizes: dict, device: torch.device, peak_flops: tuple[float, str]) -> dict[str, dict]:
    """Every variant of the module docstring for the codebook and the transformer; prints them."""
    gpu = preset_dict("trainer", "gpu")
    original = original_options(gpu)
    steps = sizes["train_steps"]
    out: dict[str, dict] = {}
    for what in ("codebook", "transformer"):
        paper = sizes[f"{what}_batch"]
        rows = {"original": measure(what, sizes, model, paper, original, device, steps),
                "gpu": measure(what, sizes, model, paper, gpu, device, steps, count_flops=True)}
        if device.type == "cuda":  # no memory to fit on a CPU (the smoke mode)
            big = largest_batch(what, sizes, model, original, device)
            rows["gpu_largest"] = measure(what, sizes, model, big, gpu, device, steps)
            rows["original_largest"] = measure(what, sizes, model, big, original, device, steps)
        if os.environ.get("BENCH_GPU_COMPILE", "") not in ("", "0"):
            rows["gpu_compiled_largest"] = measure(what, sizes, model, rows.get("gpu_largest", rows["gpu"])["batch"],
                                                   {**gpu, "compile": True}, device, steps)
        out[what] = rows
        _print(what, rows, peak_flops)
    return out


def _print(what: str, rows: dict[str, dict], peak_flops: tuple[float, str]) -> None:
    peak, source = peak_flops
    base = rows["original"]
    names = {"original": "fp32 eager (the original's procedure), the paper's batch",
             "gpu": "trainer=gpu (bf16 + its options), the paper's batch",
             "gpu_largest": "trainer=gpu, the largest batch that fits 80 GB",
             "original_largest": "fp32 eager, that batch",
             "gpu_compiled_largest": "trainer=gpu + trainer.compile, that batch"}
    print(f"training step, {what} (MFU against {peak / 1e12:.0f} TFLOP/s, {source}):")
    for key, row in rows.items():
        mfu = rows["gpu"]["flops_per_sample"] * row["samples_per_s"] / peak  # the same FLOPs in every variant
        ratio = row["samples_per_s"] / base["samples_per_s"]
        against = rows.get("original_largest") if key.endswith("largest") and key != "original_largest" else None
        also = f", {row['samples_per_s'] / against['samples_per_s']:.2f}x fp32 at this batch" if against else ""
        print(f"  {names[key]:<58} batch {row['batch']:>4}: {1e3 * row['seconds']:7.1f} ms/step, "
              f"{row['samples_per_s']:8.1f} samples/s ({ratio:.2f}x the baseline{also}), MFU {100 * mfu:5.1f}%, "
              f"peak {row['peak_bytes'] / 2**30:.1f} GiB, loss {row['loss']:.3f}")
