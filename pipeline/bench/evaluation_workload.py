"""The evaluation workload: the sample stage's clips per second at the paper's samples per video, against the
original's `generate_samples` procedure, measured in the same run on the paper's VAS models (random weights).

Ours: what `stages.sample` does per batch (`pipeline.generate.sample.run_split`): `generate` (the KV-cached sampler,
top-k 64 seeded, then the codebook's decoder) and the stage's vocoder (MelGAN, the paper's size, its CPU fast
path) on a batch of SAMPLES_PER_VIDEO = 10, the README's VAS recipe (10 samples per video), each row its own
212-frame condition as the stage batches clips; at the machine's full thread count.

The original (spec §4.6(2), §7.1): `generate_samples.py` at the README's VAS sampler batch of 4, for every one of
the 265 steps a forward of [212 feats, 264 buffer slots] (full recomputation), then the same decoder and the same
vocoder (the original's sampler writes no wav by default; vocoding both sides keeps the work equal). Each of its
steps is the same forward of 476 positions, so ORIGINAL_STEPS of them are timed and the token time is
EXTRAPOLATED x 265 / ORIGINAL_STEPS (the output says so); its decoder and vocoder run in full.

`BENCH_QUICK=1` (`make bench QUICK=1`): the original's decoder and vocoder are not run; their cost is taken as
our per-clip decode + vocoder + tokens time x 4 (the same code on the same shapes; an upper bound, in the
original's favour), said in the output.
"""
from __future__ import annotations

import os

import torch

from pipeline.bench.measure import Clock, load_line, peak_rss_gib, roofline
from pipeline.bench.paper_models import build_models, paper_sizes
from pipeline.bench.transformer_sampling import forward_flops
from pipeline.build.vocoder import Vocoder
from pipeline.config.presets import compose_stage
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.sampling import sample_uncached
from pipeline.generate.settings import SamplingSettings
from pipeline.generate.user_clip import generate
from pipeline.media.audio import SR

SAMPLES_PER_VIDEO = 10    # README: VAS 10 samples per video (the tables' 100 for some rows)
ORIGINAL_BATCH = 4        # README: the VAS sampler batch
ORIGINAL_STEPS = 2        # of its 265 identical steps, timed
TARGET = 30.0


def _models():
    """(wrapper, MelGAN generator, sizes): bench-gpu's paper models (`pipeline.bench.gpu.paper_sizes`: the VAS
    presets' GPT, 212 condition frames and top-k 64, the README's VAS recipe) on the CPU."""

    sizes = paper_sizes()
    return (*build_models(sizes, torch.device("cpu")), sizes)


def main() -> list[str]:

    quick = os.environ.get("BENCH_QUICK", "") not in ("", "0")
    threads = torch.get_num_threads()
    model, generator, sizes = _models()
    S, top_k = sizes["S"], sizes["top_k"]
    num_tokens = model.num_tokens  # one window of the codebook's grid: 265
    vocoder = Vocoder(generator)
    stage = compose_stage("sample", [])  # the stage's sampling settings and sampler (on a CPU: the exact path)
    settings = SamplingSettings.from_config(stage.sampling, {"top_k": top_k})  # auto: the VAS preset's 64
    sampler = TokenSampler.from_config(model, stage.sampling)
    probe = roofline()
    print(f"paper VAS models (transformer 212 feats, VAS codebook, MelGAN), random weights, {threads} thread(s); "
          f"{load_line()}{'; QUICK MODE' if quick else ''}")

    torch.manual_seed(1)
    cond = torch.rand(SAMPLES_PER_VIDEO, sizes["feat_depth"], S)
    vocoder(generate(sampler, cond[:1], settings, 10, None, torch.Generator().manual_seed(0)))  # warm-up, 2 columns
    with Clock() as tokens_decode:
        mels = generate(sampler, cond, settings, num_tokens, None, torch.Generator().manual_seed(1))
    with Clock() as vocode:
        waves = vocoder(mels)
    stage_wall = tokens_decode.wall + vocode.wall
    per_clip = stage_wall / SAMPLES_PER_VIDEO
    print(f"sample stage, batch {SAMPLES_PER_VIDEO} (the samples per video): tokens + decode (`generate`) in "
          f"{tokens_decode}, vocoder in {vocode} ({waves.shape[-1] / SR:.2f} s of audio a clip) = "
          f"{SAMPLES_PER_VIDEO / stage_wall:.3f} clips/s wall ({per_clip:.1f} s per clip; peak RSS "
          f"{peak_rss_gib():.2f} GiB)")

    cond4 = cond[:ORIGINAL_BATCH]
    gt = torch.zeros(ORIGINAL_BATCH, num_tokens, dtype=torch.long)
    steps = [0, num_tokens - 1][:ORIGINAL_STEPS] if ORIGINAL_STEPS <= 2 else list(range(ORIGINAL_STEPS))
    with Clock() as original_steps:
        tokens = sample_uncached(model, cond4, mode="nopix", top_k=top_k, gt_tokens=gt, steps=steps,
                                 generator=torch.Generator().manual_seed(1))
    if quick:  # the same decoder and vocoder code on the same shapes: our per-clip cost of them, batch 10
        tail_wall = ORIGINAL_BATCH * (vocode.wall + tokens_decode.wall) / SAMPLES_PER_VIDEO
        tail_cpu = ORIGINAL_BATCH * (vocode.cpu + tokens_decode.cpu) / SAMPLES_PER_VIDEO
        tail_note = (f"decode + vocoder NOT timed (QUICK MODE): at most our per-clip cost x {ORIGINAL_BATCH} = "
                     f"{tail_wall:.1f} s (our figure includes our tokens, so this favours the original)")
    else:
        with Clock() as tail:
            spec = model.decode_to_spec(tokens)
            vocoder(((spec[:, 0].float() + 1) / 2))
        tail_wall, tail_cpu = tail.wall, tail.cpu
        tail_note = f"decode + vocoder of the {ORIGINAL_BATCH} clips in {tail}"
    probe = probe.best(roofline())  # the better of a probe before and one after the timings
    tokens_wall = original_steps.wall * num_tokens / len(steps)
    tokens_cpu = original_steps.cpu * num_tokens / len(steps)
    original_per_clip = (tokens_wall + tail_wall) / ORIGINAL_BATCH
    flops = forward_flops(model.transformer, S + num_tokens - 1, 0, ORIGINAL_BATCH)  # one full recomputation
    step_share = probe.compute_seconds(flops) * len(steps) / original_steps.wall
    print(f"{probe} (the better of a probe before and one after)")
    print(f"original generate_samples procedure, batch {ORIGINAL_BATCH}: {len(steps)} of its {num_tokens} identical "
          f"full-recomputation steps timed in {original_steps} ({100 * step_share:.0f}% of the GEMM bound), "
          f"EXTRAPOLATED to {num_tokens} steps: {tokens_wall:.0f} s wall / {tokens_cpu:.0f} s CPU; {tail_note}; "
          f"{original_per_clip:.1f} s per clip = {1 / original_per_clip:.4f} clips/s")
    ratio = original_per_clip / per_clip
    ratio_cpu = (tokens_cpu + tail_cpu) / ORIGINAL_BATCH / ((tokens_decode.cpu + vocode.cpu) / SAMPLES_PER_VIDEO)
    print(f"evaluation workload: the sample stage at batch {SAMPLES_PER_VIDEO} is {ratio:.1f}x the original's "
          f"clips/s (wall, same run; target >= {TARGET:.0f}x: {'MET' if ratio >= TARGET else 'MISSED'}; in process "
          f"CPU time {ratio_cpu:.1f}x, steadier on a shared machine); our clip "
          f"is {100 * vocode.wall / stage_wall:.0f}% vocoder and {100 * tokens_decode.wall / stage_wall:.0f}% "
          f"tokens + codebook decoder{' (QUICK MODE)' if quick else ''}")
    return [f"sample stage {SAMPLES_PER_VIDEO / stage_wall:.3f} clips/s at batch {SAMPLES_PER_VIDEO} vs the original "
            f"{1 / original_per_clip:.4f} at batch 4 (its tokens extrapolated from {len(steps)} steps): {ratio:.1f}x "
            f"wall, {ratio_cpu:.1f}x CPU (target 30x){' QUICK' if quick else ''}", load_line()]


if __name__ == "__main__":
    main()
