"""One training step of the PAPER-size codebook (VGGSound preset) at batch 2 on this CPU, per variant.

A step = encoder/quantiser/decoder forward, the generator loss (L1 + LPAPS + adaptive-weight GAN term + VQ loss)
and its backward, then the discriminator loss and its backward: what the training loop does per batch.
Each variant runs in a fresh subprocess (so its peak RSS is its own): one untimed warm-up step on a small
input (kernels, compile), then timed full-size steps. Times are reported as CPU seconds of the process (robust
to other jobs sharing the machine) and wall seconds, as ratios against the fp32 eager baseline of the same run.
Variants: `channels_last`; `exact_adaptive_grads` (the original's two extra gradient passes for an adaptive
weight that the paper's [1, 1] clamp fixes anyway; our default skips them with identical results); `compile`.

    python -m pipeline.bench codebook_step                  (baseline and channels_last, ~1.5 min idle)
    CODEBOOK_BENCH_STEPS=2 CODEBOOK_BENCH_VARIANTS=channels_last,exact_adaptive_grads,compile python -m ...
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from pipeline.build.codebook import build_codebook
from pipeline.config.presets import compose_stage
from pipeline.media.mel import CROP_LEN, N_MELS

ROOT = Path(__file__).resolve().parents[2]


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def training_step(model, forward, opt_ae, opt_d, x, global_step: int, amp_dtype=None) -> float:
    """One codebook training step as the loop does it (module docstring) -> the generator loss.

    `amp_dtype` (e.g. torch.bfloat16) runs the forwards and losses under autocast; backward and the optimiser
    steps stay outside it, as Accelerate's mixed precision does."""
    import contextlib

    import torch

    amp = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else contextlib.nullcontext()
    with amp:
        xrec, qloss = forward(x)
        loss, _ = model.loss(qloss, x, xrec, 0, global_step, last_layer=model.get_last_layer())
    opt_ae.zero_grad(set_to_none=True)
    loss.backward()
    opt_ae.step()
    with amp:
        d_loss, _ = model.loss(qloss, x, xrec.detach(), 1, global_step)
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return float(loss.detach())


def measure(variant: str, steps: int, batch: int = 2) -> dict:
    """Build the paper model + loss, run warm-up + `steps` timed steps; returns times and peak RSS."""
    import torch
    from omegaconf import OmegaConf


    torch.set_num_threads(int(os.environ.get("CODEBOOK_BENCH_THREADS", "1")))
    torch.manual_seed(0)
    node = compose_stage("train_codebook", ["codebook=vggsound", "dataset=vggsound"]).codebook  # inherits vas.yaml
    cfg = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    cfg.loss.lpaps_trunk, cfg.loss.lpaps_stats = "random", None  # random LPAPS, placeholder stats: same cost
    model = build_codebook(cfg.model, cfg.loss)
    model.train()
    x = torch.rand(batch, 1, N_MELS, CROP_LEN) * 2 - 1  # one batch of the clip's model inputs
    small = x[:1, :, :, :64].clone()
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
        small = small.contiguous(memory_format=torch.channels_last)
    model.loss.exact_adaptive_grads = variant == "exact_adaptive_grads"
    forward = model
    if variant == "compile":
        # static shapes: with a small warm-up then the full input, dynamic shapes failed in inductor
        # (torch 2.13: "cannot determine truth value of Relational"), so the warm-up is full-size here
        forward = torch.compile(model, dynamic=False)
        small = x
    opt_ae = torch.optim.Adam(list(model.autoencoder_parameters()), lr=1e-6, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(model.loss.discriminator.parameters(), lr=1e-6, betas=(0.5, 0.9))
    rss_built = _rss_mb()

    def step(x, global_step: int) -> None:
        training_step(model, forward, opt_ae, opt_d, x, global_step)

    start = time.perf_counter()
    step(small, cfg.loss.disc_start)  # past disc_start: every term is live
    warmup = time.perf_counter() - start
    walls, cpus = [], []
    for i in range(steps):
        start, cpu = time.perf_counter(), _cpu_s()
        step(x, cfg.loss.disc_start + 1 + i)
        walls.append(time.perf_counter() - start)
        cpus.append(_cpu_s() - cpu)
    return {"variant": variant, "warmup_s": warmup, "step_s": min(walls), "cpu_s": min(cpus), "steps": steps,
            "peak_rss_mb": _rss_mb(), "built_rss_mb": rss_built, "threads": torch.get_num_threads()}


def _run_variant(variant: str, steps: int) -> dict:
    out = subprocess.run([sys.executable, "-m", "pipeline.bench.codebook_step", variant, str(steps)], cwd=ROOT,
                         capture_output=True, text=True, timeout=900, check=False)
    if out.returncode != 0:
        return {"variant": variant, "error": (out.stderr or out.stdout).strip().splitlines()[-1:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    steps = int(os.environ.get("CODEBOOK_BENCH_STEPS", "1"))
    extra = os.environ.get("CODEBOOK_BENCH_VARIANTS", "channels_last")
    variants = ["eager_fp32"] + [v for v in extra.split(",") if v]
    unknown = set(variants) - {"eager_fp32", "channels_last", "exact_adaptive_grads", "compile"}
    if unknown:
        raise SystemExit(f"unknown variants {sorted(unknown)}")
    results = [_run_variant(v, steps) for v in variants]
    base = results[0]
    if "error" in base:
        raise SystemExit(f"baseline failed: {base['error']}")
    print(f"paper-size codebook (VGGSound preset), batch 2 x 1 x 80 x 848, {base['threads']} thread(s), "
          f"{steps} timed step(s) after a small warm-up")
    print(f"baseline eager fp32: {base['cpu_s']:.1f} CPU s/step ({base['step_s']:.1f} s wall, warm-up "
          f"{base['warmup_s']:.1f} s), peak RSS {base['peak_rss_mb']:.0f} MB "
          f"(+{base['peak_rss_mb'] - base['built_rss_mb']:.0f} MB over the built model)")
    for r in results[1:]:
        if "error" in r:
            print(f"{r['variant']:>20}: failed ({r['error']})")
            continue
        print(f"{r['variant']:>20}: CPU time x{r['cpu_s'] / base['cpu_s']:.2f} ({r['cpu_s']:.1f} s), wall "
              f"x{r['step_s'] / base['step_s']:.2f}, warm-up x{r['warmup_s'] / base['warmup_s']:.2f}, "
              f"peak RSS x{r['peak_rss_mb'] / base['peak_rss_mb']:.2f}")


if __name__ == "__main__":
    if len(sys.argv) == 3:  # a variant's subprocess
        print(json.dumps(measure(sys.argv[1], int(sys.argv[2]))))
    else:
        main()
