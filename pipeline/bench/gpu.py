"""`make bench-gpu`: the paper-size models on a CUDA card, every figure beside its baseline and its bound (issue 23).

Random weights (speed does not depend on them). Parts, each timed:
1. Exactness of the fast path: its decoder (a static cache, one fixed-shape step per token, a CUDA graph) on the
   fp32 model against `sample`'s greedy tokens and teacher-forced logits (fails above 1e-3 of the logits' std); and
   the compiled bf16 step against the eager bf16 step.
2. A 10-s clip end to end (265 tokens, the codebook's decoder, MelGAN) through the sample stage's own sampler
   (`pipeline.generate.decoding.TokenSampler` from conf/sample.yaml's `sampling` group, `generate` and the vocoder
   under its autocast, as `stages.sample` runs them), per clip at batch 1 and at BATCHES' larger sizes; the baseline
   the exact fp32 path at the same batch; targets: <= 100 ms of tokens and <= 150 ms end to end at batch 1, >= 100
   clips/s at batch >= 16; the first call's time (compiling, capturing) apart.
3. The decoding step at batch 1 against the card's bandwidth bound (a roofline probe of the same run: bf16 GEMV
   GB/s; the step must read every weight once, and the cache's keys and values): the sampler's (compiled) step and
   the eager step in a graph, and their CUDA kernels per step; target >= 60% of the bound.
4. Training (`pipeline.bench.gpu_training`): codebook and transformer steps, the original's procedure against
   `trainer=gpu` at the paper's batch and at the largest that fits 80 GB, samples/s and MFU.
5. Extraction (`pipeline.bench.gpu_extraction`): ResNet50 features on the card and mels, videos decoded in worker
   processes, clips/s against one process and its perfect scaling.

`python -m pipeline.bench gpu` (what `make bench-gpu` runs) needs CUDA and says so otherwise; `BENCH_GPU_SMOKE=1`
(`make bench-gpu SMOKE=1`, and `tests/test_bench.py` inside `make test`) runs every part on the CPU with tiny models,
a 5 x 8 token clip and the fast path eager (`sampling.precision=bf16`; CUDA graphs and compiling need CUDA): the
code paths are checked, the figures mean nothing.
"""
from __future__ import annotations

import os
import time
from typing import Any

import torch

from pipeline.bench.gpu_extraction import extraction
from pipeline.bench.gpu_training import card_peak_flops, training
from pipeline.bench.measure import load_line, roofline
from pipeline.bench.paper_models import SMOKE, build_models, linear_bytes, paper_sizes
from pipeline.build.vocoder import Vocoder
from pipeline.config.presets import compose_stage
from pipeline.generate.decoding import StaticDecoder, TokenSampler, describe
from pipeline.generate.sampling import sample
from pipeline.generate.settings import SamplingSettings
from pipeline.generate.user_clip import generate
from pipeline.media.audio import SR
from pipeline.media.mel import FRAMES_PER_COLUMN, HOP

TARGETS = {"tokens_s": 0.100, "clip_s": 0.150, "clips_per_s": 100.0, "bound_share": 0.60}  # issue 23, batch 1 / >= 16


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _peak_gib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")


def stage_sampling(smoke: bool):
    """The sample stage's `sampling` group (conf/sample.yaml): what `stages.sample` builds its sampler from. The
    smoke mode asks for the fast path (`precision=bf16`), which `auto` takes only on a GPU."""
    return compose_stage("sample", ["sampling.precision=bf16"] if smoke else []).sampling


def exactness(model, sizes: dict, device: torch.device, forced_steps: int = 16) -> dict[str, Any]:
    """The fast path's decoder on the fp32 model (graphs as on the card, the eager step) against `sample`, batch 2:
    the share of equal greedy tokens and the largest logit difference (relative to the logits' std) over
    `forced_steps` steps fed the same tokens. Random weights' near-flat logits can break a tie differently when
    the masked fixed-length attention takes another kernel: the logits decide."""
    H, W = model.first_stage_permuter.H, model.first_stage_permuter.W
    num_tokens = sizes.get("num_tokens", H * W)
    S = sizes["S"]
    feats = torch.rand(2, sizes["feat_depth"], S, device=device)
    want = sample(model, feats, num_tokens, greedy=True)
    decoder = StaticDecoder(model.transformer, 2, S, (H, W), graphs=device.type == "cuda")
    got = decoder.sample(feats, num_tokens, greedy=True)
    gpt = model.transformer
    with torch.inference_mode():
        cache = gpt.new_cache(2, S + H * W)
        dynamic = [gpt.prefill(want[:, :0], feats, cache)]
        static = [decoder.prefill(want[:, :0], feats)]
        for i in range(min(forced_steps, num_tokens - 1)):
            dynamic.append(gpt.step(want[:, i], cache))
            static.append(decoder.step(want[:, i : i + 1], S + i).clone())
        dynamic, static = torch.stack(dynamic), torch.stack(static)
    diff = float((static - dynamic).abs().max() / dynamic.std())
    same = float((got == want).float().mean())
    print(f"fp32 fast-path decoder vs `sample`: greedy tokens {100 * same:.1f}% equal "
          f"({'EQUAL' if same == 1 else 'random weights: near-ties'}); teacher-forced logits over "
          f"{len(dynamic)} steps: max |diff| {diff:.1e} of their std")
    return {"tokens_equal": same, "logit_diff": diff, "exact": same == 1 or diff < 1e-3}


def compiled_agreement(sampler: TokenSampler, sizes: dict, device: torch.device, steps: int = 16) -> float | None:
    """The sampler's batch-1 step (compiled on a card) against the eager step of the same bf16 copy, teacher-forced
    over `steps` steps: the largest logit difference relative to the logits' std (None when nothing is compiled)."""
    decoder = sampler.decoder(1, sizes["S"])
    if not decoder.compiled:
        return None
    eager = StaticDecoder(sampler.gpt, 1, sizes["S"], sampler.grid, graphs=decoder.graphs)
    feats = torch.rand(1, sizes["feat_depth"], sizes["S"], device=device)
    tokens = torch.randint(0, sampler.gpt.vocab_size, (1, steps), device=device)
    with torch.inference_mode():
        a = [decoder.prefill(tokens[:, :0], feats)]
        b = [eager.prefill(tokens[:, :0], feats)]
        for i in range(steps - 1):
            a.append(decoder.step(tokens[:, i : i + 1], sizes["S"] + i).clone())
            b.append(eager.step(tokens[:, i : i + 1], sizes["S"] + i).clone())
    a, b = torch.stack(a).float(), torch.stack(b).float()
    diff = float((a - b).abs().max() / b.std())
    print(f"compiled bf16 step vs the eager bf16 step: max |logit diff| {diff:.1e} of their std over {steps} steps")
    return diff


def step_bytes(gpt, batch: int, cond_length: int, grid: tuple[int, int]) -> int:
    """What one decoding step must read: every weight of the GPT's linear layers and, in attention, the keys and
    values of every slot of the static cache (S + H * W per sequence, 2 x n_layer x n_embd values each)."""
    slots = cond_length + grid[0] * grid[1]
    return linear_bytes(gpt) + 2 * gpt.n_layer * batch * slots * gpt.n_embd * gpt.pos_emb.element_size()


def clips(model, generator, sizes: dict, device: torch.device, sampler: TokenSampler,
          sampling, probe) -> dict[int, dict]:
    """Seconds per clip end to end through the stage's sampler (`generate`, the vocoder under its autocast) against
    the exact fp32 path, per batch; the tokens' bound is 265 steps at the bandwidth bound of a step (`step_bytes`)."""
    H, W = model.first_stage_permuter.H, model.first_stage_permuter.W
    num_tokens = sizes.get("num_tokens", H * W)
    exact = TokenSampler(model, "fp32", False)
    vocoder = Vocoder(generator, device=device)
    settings = SamplingSettings.from_config(sampling, {"top_k": sizes["top_k"]})  # auto: the VAS preset's 64
    clip_s = num_tokens // H * FRAMES_PER_COLUMN * HOP / SR
    out = {}
    for batch in sizes["batches"]:
        feats = torch.rand(batch, sizes["feat_depth"], sizes["S"], device=device)

        def clip(by: TokenSampler, seed: int, feats=feats):
            mels = generate(by, feats, settings, num_tokens, None, torch.Generator(device=device).manual_seed(seed))
            with by.autocast():
                return vocoder(mels.to(device))

        _, first = _timed(lambda: clip(sampler, 0), device)  # compiling (batch 1), capturing the graph
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        wave, seconds = _timed(lambda: clip(sampler, 1), device)
        peak = _peak_gib(device)
        _, tokens_s = _timed(lambda: sampler.sample(feats, settings, num_tokens,
                                                    generator=torch.Generator(device=device).manual_seed(1)), device)
        clip(exact, 0)
        _, base = _timed(lambda: clip(exact, 1), device)
        row = {"seconds_per_clip": seconds / batch, "clips_per_s": batch / seconds, "peak_gib": peak,
               "tokens_seconds_per_clip": tokens_s / batch, "fp32_seconds_per_clip": base / batch,
               "first_call_s": first, "waveform_samples": int(wave.shape[-1]),
               "tokens_bound_s": num_tokens * probe.memory_seconds(step_bytes(sampler.gpt, batch, sizes["S"],
                                                                              sampler.grid)) / batch}
        out[batch] = row
        if batch == 1:
            target = (f"targets <= {1e3 * TARGETS['tokens_s']:.0f} ms of tokens, <= {1e3 * TARGETS['clip_s']:.0f} ms "
                      f"end to end")
        else:
            target = f"target >= {TARGETS['clips_per_s']:.0f} clips/s at batch >= 16"
        print(f"{clip_s:.2f}-s clip end to end, batch {batch}, {describe(sampler.path, batch)}: "
              f"{1e3 * seconds / batch:.1f} ms per clip = {batch / seconds:.1f} clips/s ({1e3 * tokens_s / batch:.1f} "
              f"ms of it the {num_tokens} tokens, bound {1e3 * row['tokens_bound_s']:.1f} ms; first call "
              f"{first:.1f} s; peak {peak:.2f} GiB) vs the exact fp32 path {1e3 * base / batch:.1f} ms per clip "
              f"({base / seconds:.1f}x); {target}")
    return out


def _kernels_per_step(step, device: torch.device) -> int | None:
    """CUDA kernels one call of `step` launches (torch's profiler; None off CUDA)."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    step()
    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        step()
        _sync(device)
    return sum(1 for e in prof.events() if e.device_type.name == "CUDA")


def decoding_step(sampler: TokenSampler, sizes: dict, device: torch.device, probe) -> dict[str, Any]:
    """The batch-1 decoding step of the sampler and of the eager step in a graph, against the bandwidth bound."""
    S, repeats = sizes["S"], 200 if device.type == "cuda" else 5
    position = S + min(100, sampler.grid[0] * sampler.grid[1] - 2)  # a step in the middle of a clip
    nbytes = step_bytes(sampler.gpt, 1, S, sampler.grid)
    floor = probe.memory_seconds(nbytes)
    token = torch.zeros(1, 1, dtype=torch.long, device=device)
    feats = torch.rand(1, sizes["feat_depth"], S, device=device)
    rows = {}
    variants = {"sampler": sampler.decoder(1, S)}
    if variants["sampler"].compiled:
        variants["eager step in a graph"] = StaticDecoder(sampler.gpt, 1, S, sampler.grid, graphs=True)
    with torch.inference_mode():
        for name, decoder in variants.items():
            decoder.prefill(token[:, :0], feats)
            decoder.step(token, position)  # captured (and compiled) on first use
            _, seconds = _timed(lambda d=decoder: [d.step(token, position) for _ in range(repeats)], device)
            step = seconds / repeats
            kernels = _kernels_per_step(lambda d=decoder: d.step_fn(d.idx, d.pos, d.cache), device)
            rows[name] = {"step_s": step, "bound_share": floor / step, "kernels": kernels}
            print(f"bf16 decoding step, batch 1, {name} ({describe_decoder(decoder)}): {1e6 * step:.0f} us against "
                  f"the bandwidth bound {1e6 * floor:.0f} us ({nbytes / 2**20:.0f} MiB at "
                  f"{probe.gemv_gbs:.0f} GB/s) = {100 * floor / step:.0f}% (target >= "
                  f"{100 * TARGETS['bound_share']:.0f}%)" + (f"; {kernels} CUDA kernels per step" if kernels else ""))
    return rows


def describe_decoder(decoder: StaticDecoder) -> str:
    return ", ".join(["compiled" if decoder.compiled else "eager", "CUDA graph" if decoder.graphs else "no graph"])


def run(smoke: bool = False, device: str | torch.device | None = None) -> dict[str, Any]:
    """Every part (module docstring); returns the figures. `smoke`: tiny models on the CPU."""
    if device is None:
        device = "cpu" if smoke else "cuda"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make bench-gpu needs a CUDA device (torch.cuda.is_available() is False; a CPU wheel of "
                         "torch? `make install TORCH_SPEC=torch`); `make bench-gpu SMOKE=1` runs the CPU smoke mode")
    start = time.perf_counter()
    sizes = SMOKE if smoke else paper_sizes()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench-gpu{' SMOKE MODE (tiny models; figures mean nothing)' if smoke else ''} on {name}, torch "
          f"{torch.__version__}; {load_line()}")
    model, generator = build_models(sizes, device)
    n = sum(p.numel() for p in model.transformer.parameters())
    print(f"transformer {n / 1e6:.1f} M params, {sizes['S']} condition frames, grid "
          f"{model.first_stage_permuter.H} x {model.first_stage_permuter.W}; codebook preset {sizes['codebook']}, "
          f"MelGAN preset {sizes['vocoder']}")
    big = device.type == "cuda"
    probe = roofline(device, torch.bfloat16, gemv_mib=1024 if big else 64, gemm_n=8192 if big else 512)
    print(probe)
    report: dict[str, Any] = {"device": device.type, "name": name, "smoke": smoke, "part_seconds": {}}

    def part(key: str, fn):
        tic = time.perf_counter()
        report[key] = fn()
        report["part_seconds"][key] = time.perf_counter() - tic
        print(f"  ({key}: {report['part_seconds'][key]:.0f} s)", flush=True)

    sampling = stage_sampling(smoke)
    sampler = TokenSampler.from_config(model, sampling)
    print(f"the sample stage's sampler here: {sampler}")
    part("static", lambda: exactness(model, sizes, device))
    part("clips", lambda: clips(model, generator, sizes, device, sampler, sampling, probe))
    part("compiled_logit_diff", lambda: compiled_agreement(sampler, sizes, device))
    part("decoding_step", lambda: decoding_step(sampler, sizes, device, probe))
    sampler = None  # its copy, caches and graphs: the memory goes to training
    if device.type == "cuda":
        torch.cuda.empty_cache()
    peak = card_peak_flops(name, probe.gemm_gflops * 1e9)
    part("training", lambda: training(model, sizes, device, peak))
    part("extraction", lambda: extraction(str(device), smoke))
    report["seconds"] = time.perf_counter() - start
    print(f"bench-gpu took {report['seconds']:.0f} s: " + ", ".join(f"{k} {v:.0f} s"
                                                                     for k, v in report["part_seconds"].items()))
    return report


def main() -> list[str]:
    report = run(smoke=os.environ.get("BENCH_GPU_SMOKE", "") not in ("", "0"))
    static = report["static"]
    lines = [f"{report['name']}{' (smoke)' if report['smoke'] else ''}, {report['seconds']:.0f} s: fp32 fast path "
             f"vs `sample`: {100 * static['tokens_equal']:.1f}% greedy tokens equal, logits within "
             f"{static['logit_diff']:.1e} std"]
    for batch, c in report["clips"].items():
        lines.append(f"batch {batch}: {1e3 * c['seconds_per_clip']:.1f} ms per clip end to end "
                     f"({1e3 * c['tokens_seconds_per_clip']:.1f} ms tokens, bound {1e3 * c['tokens_bound_s']:.1f}), "
                     f"{c['clips_per_s']:.1f} clips/s, {c['fp32_seconds_per_clip'] / c['seconds_per_clip']:.1f}x "
                     f"the exact fp32 path")
    for name, row in report["decoding_step"].items():
        lines.append(f"decoding step ({name}): {100 * row['bound_share']:.0f}% of the bandwidth bound")
    for what, rows in report["training"].items():
        base = rows["original"]["samples_per_s"]
        line = f"{what} training: trainer=gpu {rows['gpu']['samples_per_s'] / base:.2f}x the original's at its batch"
        if "gpu_largest" in rows:
            line += (f", {rows['gpu_largest']['samples_per_s'] / rows['original_largest']['samples_per_s']:.2f}x "
                     f"fp32 at batch {rows['gpu_largest']['batch']}")
        lines.append(line)
    for stage, row in report["extraction"].items():
        lines.append(f"{stage} extraction: {row['clips_per_s']:.1f} clips/s ({row['workers']} workers; one process "
                     f"{row['baseline_clips_per_s']:.2f})")
    if not static["exact"]:
        raise SystemExit(f"the fast path's fp32 logits differ from `sample`'s by {static['logit_diff']:.1e} std")
    return lines


if __name__ == "__main__":
    main()
