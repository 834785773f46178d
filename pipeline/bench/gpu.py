"""`make bench-gpu`: the paper-size models on a CUDA device (random weights; speed does not depend on them).

1. A 10-s clip end to end in bf16: 265 tokens from the paper's VAS transformer (212 feats, a bf16 copy from
   `inference_copy`) through `pipeline.generate.sampling.StaticDecoder` (a static KV cache, one CUDA graph per batch
   size
   replayed per token), the VAS codebook's decoder and the paper's MelGAN under bf16 autocast; seconds per clip
   and clips/s at batch 1 and 16 (top-k 64, seeded, the README's VAS recipe), the fp32 dynamic-cache sampler at
   the same batch as the baseline, and the peak memory of each.
2. The exactness of the timed decoder: in fp32 its greedy tokens and logits against `sample`'s (CUDA graphs
   included); it fails if the logits differ by more than 1e-3 of their std.
3. One training step of the paper's VAS codebook (batch 3, the preset's) and transformer (batch 2) in bf16
   autocast against fp32: seconds per step and peak memory.
4. A roofline probe of the card (bf16 GEMV GB/s, GEMM TFLOP/s) and the bf16 decoding step as a share of its
   bandwidth bound.

`python -m pipeline.bench gpu` (what `make bench-gpu` runs) needs CUDA and says so otherwise; `BENCH_GPU_SMOKE=1`
(`make bench-gpu SMOKE=1`, and `tests/test_bench.py` inside `make test`) runs every part on the CPU with tiny
models and a 5 x 8 token clip, the decoder eager (CUDA graphs need CUDA), in a few seconds: the code path is
checked, the figures mean nothing.
"""
from __future__ import annotations

import os
import resource
import time
from typing import Any

import torch
from omegaconf import OmegaConf

from pipeline.bench.codebook_step import training_step
from pipeline.bench.measure import load_line, roofline
from pipeline.bench.paper_models import SMOKE, build_models, linear_bytes, paper_sizes
from pipeline.build.codebook import build_codebook
from pipeline.build.vocoder import Vocoder
from pipeline.config.presets import preset
from pipeline.generate.sampling import StaticDecoder, inference_copy, sample
from pipeline.media.audio import SR
from pipeline.media.mel import FRAMES_PER_COLUMN, HOP, N_MELS


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float:
    """Peak memory since the last reset: allocated on CUDA; on CPU the process's peak RSS (never reset)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _timed(fn, device: torch.device) -> tuple[Any, float]:
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def _grid(model) -> tuple[int, int]:
    """The wrapper's token grid (H, W): its permuter's, which is its codebook's."""
    return model.first_stage_permuter.H, model.first_stage_permuter.W


def _clip(model, decoder, vocoder, feats, sizes, seed: int, amp) -> torch.Tensor:
    """Tokens -> mel in [0, 1] -> waveform, as the sample stage does (`pipeline.generate.user_clip.generate`)."""
    gen = torch.Generator(device=feats.device).manual_seed(seed)
    tokens = decoder(feats, gen)
    with torch.autocast(feats.device.type, dtype=torch.bfloat16, enabled=amp):
        spec = model.decode_to_spec(tokens)
    mels = (spec[:, 0].float() + 1) / 2
    # the CPU vocoder's fast path is its own fp32 matrix products; on CUDA it runs the Generator's convolutions
    with torch.autocast(feats.device.type, dtype=torch.bfloat16, enabled=amp and feats.device.type == "cuda"):
        return vocoder(mels)


def clips(model, generator, sizes: dict, device: torch.device) -> dict[int, dict]:
    """Seconds per clip, end to end, bf16 + static cache (+ CUDA graphs) against fp32 `sample`, per batch."""

    H, W = _grid(model)
    num_tokens = sizes.get("num_tokens", H * W)
    fast_gpt = inference_copy(model, dtype=torch.bfloat16, fuse_qkv=True)
    vocoder = Vocoder(generator, device=device)
    settings = {"top_k": sizes["top_k"], "temperature": 1.0}
    out = {}
    for batch in sizes["batches"]:
        feats = torch.rand(batch, sizes["feat_depth"], sizes["S"], device=device)
        static = StaticDecoder(fast_gpt, batch, sizes["S"], grid=(H, W))

        def fast(f, gen, static=static):
            return static.sample(f, num_tokens, generator=gen, **settings)

        def plain(f, gen):
            return sample(model, f, num_tokens, generator=gen, **settings)

        _clip(model, fast, vocoder, feats, sizes, 0, True)  # warm-up: kernels, the graph's capture
        _reset_peak(device)
        wave, seconds = _timed(lambda: _clip(model, fast, vocoder, feats, sizes, 1, True), device)
        peak = _peak_gib(device)
        _, tokens_s = _timed(lambda: fast(feats, torch.Generator(device=device).manual_seed(1)), device)
        _clip(model, plain, vocoder, feats, sizes, 0, False)
        _reset_peak(device)
        _, base = _timed(lambda: _clip(model, plain, vocoder, feats, sizes, 1, False), device)
        out[batch] = {"seconds_per_clip": seconds / batch, "clips_per_s": batch / seconds, "peak_gib": peak,
                      "tokens_seconds_per_clip": tokens_s / batch, "fp32_seconds_per_clip": base / batch,
                      "fp32_peak_gib": _peak_gib(device), "waveform_samples": int(wave.shape[-1]),
                      "graphs": static.graphs}
        clip_s = num_tokens // H * FRAMES_PER_COLUMN * HOP / SR
        print(f"{clip_s:.2f}-s clip end to end (tokens, decode, vocoder), batch {batch}: bf16 static cache"
              f"{' + CUDA graph' if static.graphs else ' (eager)'} {1e3 * seconds / batch:.1f} ms per clip = "
              f"{batch / seconds:.1f} clips/s ({1e3 * tokens_s / batch:.1f} ms of it the {num_tokens} tokens; peak "
              f"{peak:.2f} GiB) vs fp32 `sample` {1e3 * base / batch:.1f} ms per clip "
              f"({base / seconds:.1f}x; peak {out[batch]['fp32_peak_gib']:.2f} GiB)")
    return out


def static_equals_cached(model, sizes: dict, device: torch.device, forced_steps: int = 16) -> dict[str, Any]:
    """fp32: the timed decoder (graphs as timed) against `sample`, batch 2: the share of equal greedy tokens,
    and the largest logit difference (relative to the logits' std) over `forced_steps` steps fed the same tokens.
    On CPU the kernels are the same and the tokens equal; on a GPU the masked fixed-length attention may take
    another SDPA kernel, so random weights' near-flat logits can break a tie differently: the logits decide."""

    H, W = _grid(model)
    num_tokens = sizes.get("num_tokens", H * W)
    feats = torch.rand(2, sizes["feat_depth"], sizes["S"], device=device)
    want = sample(model, feats, num_tokens, greedy=True)
    decoder = StaticDecoder(model, 2, sizes["S"])
    got = decoder.sample(feats, num_tokens, greedy=True)
    gpt, S = model.transformer, sizes["S"]
    with torch.inference_mode():
        cache = gpt.new_cache(2, S + H * W)
        dynamic = [gpt.prefill(want[:, :0], feats, cache)]
        static = [gpt.prefill(want[:, :0], feats, decoder.cache)]
        for i in range(min(forced_steps, num_tokens - 1)):
            dynamic.append(gpt.step(want[:, i], cache))
            static.append(decoder.step(want[:, i : i + 1], S + i).clone())
        dynamic, static = torch.stack(dynamic), torch.stack(static)
    diff = float((static - dynamic).abs().max() / dynamic.std())
    same = float((got == want).float().mean())
    print(f"fp32 static decoder (as timed) vs `sample`: greedy tokens {100 * same:.1f}% equal "
          f"({'EQUAL' if same == 1 else 'random weights: near-ties'}); teacher-forced logits over "
          f"{len(dynamic)} steps: max |diff| {diff:.1e} of their std")
    return {"tokens_equal": same, "logit_diff": diff, "exact": same == 1 or diff < 1e-3}


def _train_codebook(sizes: dict, device: torch.device, amp_dtype) -> dict:

    cfg = preset("codebook", sizes["codebook"])
    if OmegaConf.is_missing(cfg.loss, "lpaps_trunk"):  # the paper preset: a random trunk, no stats (same cost)
        cfg.loss.lpaps_trunk, cfg.loss.lpaps_stats = "random", None
    torch.manual_seed(0)
    model = build_codebook(cfg.model, cfg.loss).to(device).train()
    x = torch.rand(sizes["codebook_batch"], 1, N_MELS, sizes["crop_len"], device=device) * 2 - 1
    opt_ae = torch.optim.Adam(list(model.autoencoder_parameters()), lr=1e-6, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(model.loss.discriminator.parameters(), lr=1e-6, betas=(0.5, 0.9))
    step = int(cfg.loss.disc_start)  # past disc_start: every term is live
    training_step(model, model, opt_ae, opt_d, x, step, amp_dtype)  # warm-up
    _reset_peak(device)
    times, loss = [], 0.0
    for i in range(sizes["train_steps"]):
        loss, seconds = _timed(lambda i=i: training_step(model, model, opt_ae, opt_d, x, step + 1 + i, amp_dtype),
                               device)
        times.append(seconds)
    return {"seconds": min(times), "loss": loss, "peak_gib": _peak_gib(device), "batch": sizes["codebook_batch"]}


def _train_transformer(model, sizes: dict, device: torch.device, amp_dtype) -> dict:
    import contextlib

    H, W = _grid(model)
    batch = sizes["transformer_batch"]
    gpt = model.transformer.train()
    opt = torch.optim.AdamW(model.transformer_param_groups(0.01), lr=1e-6, betas=(0.9, 0.95))
    tokens = torch.randint(0, gpt.vocab_size, (batch, H * W), device=device)
    feats = torch.rand(batch, sizes["feat_depth"], sizes["S"], device=device)
    amp = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype is not None else contextlib.nullcontext

    def step() -> float:
        with amp():
            loss = model.loss_from_tokens(tokens, feats)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    step()  # warm-up
    _reset_peak(device)
    times, loss = [], 0.0
    for _ in range(sizes["train_steps"]):
        loss, seconds = _timed(step, device)
        times.append(seconds)
    gpt.eval()
    return {"seconds": min(times), "loss": loss, "peak_gib": _peak_gib(device), "batch": batch}


def training(model, sizes: dict, device: torch.device) -> dict[str, dict]:
    """One training step of each model in fp32 and in bf16 autocast (fresh optimisers; the GPT's weights move
    by lr 1e-6 per step, which does not change its speed)."""
    import copy

    out: dict[str, dict] = {"codebook": {}, "transformer": {}}
    for name, amp_dtype in (("fp32", None), ("bf16", torch.bfloat16)):
        out["codebook"][name] = _train_codebook(sizes, device, amp_dtype)
        out["transformer"][name] = _train_transformer(copy.deepcopy(model), sizes, device, amp_dtype)
    for what, rows in out.items():
        f, b = rows["fp32"], rows["bf16"]
        size = "smoke-size" if sizes is SMOKE else "paper-size"
        print(f"training step, {size} {what} (batch {f['batch']}): fp32 {1e3 * f['seconds']:.0f} ms (peak "
              f"{f['peak_gib']:.2f} GiB), bf16 autocast {1e3 * b['seconds']:.0f} ms (peak {b['peak_gib']:.2f} GiB) "
              f"= {f['seconds'] / b['seconds']:.2f}x; losses {f['loss']:.3f} / {b['loss']:.3f}")
    return out


def decode_share(model, sizes: dict, device: torch.device) -> float:
    """The bf16 static decoding step at batch 1 as a share of the card's bf16 bandwidth bound."""

    big = device.type == "cuda"
    probe = roofline(device, torch.bfloat16, gemv_mib=1024 if big else 64, gemm_n=8192 if big else 512)
    fast = inference_copy(model, dtype=torch.bfloat16, fuse_qkv=True)
    H, W = _grid(model)
    num_tokens = sizes.get("num_tokens", H * W)
    decoder = StaticDecoder(fast, 1, sizes["S"], grid=(H, W))
    feats = torch.rand(1, sizes["feat_depth"], sizes["S"], device=device)
    decoder.sample(feats, num_tokens, greedy=True)  # warm-up, capture
    with torch.inference_mode():
        fast.prefill(torch.zeros(1, 0, dtype=torch.long, device=device), feats, decoder.cache)
        _, prefill = _timed(lambda: fast.prefill(torch.zeros(1, 0, dtype=torch.long, device=device), feats,
                                                 decoder.cache), device)
    _, total = _timed(lambda: decoder.sample(feats, num_tokens, greedy=True), device)
    step = (total - prefill) / (num_tokens - 1)
    floor = probe.memory_seconds(linear_bytes(fast))
    print(f"{probe}; bf16 decoding step at batch 1: {1e6 * step:.0f} us against the bandwidth bound "
          f"{1e6 * floor:.0f} us = {100 * floor / step:.0f}% ({num_tokens / total:.0f} tokens/s with the prefill)")
    return floor / step


def run(smoke: bool = False, device: str | torch.device | None = None) -> dict[str, Any]:
    """Every part (module docstring); returns the figures. `smoke`: tiny models on the CPU."""
    if device is None:
        device = "cpu" if smoke else "cuda"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("make bench-gpu needs a CUDA device (torch.cuda.is_available() is False; a CPU wheel of "
                         "torch? `make install TORCH_SPEC=torch`); `make bench-gpu SMOKE=1` runs the CPU smoke mode")
    sizes = SMOKE if smoke else paper_sizes()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"bench-gpu{' SMOKE MODE (tiny models; figures mean nothing)' if smoke else ''} on {name}, torch "
          f"{torch.__version__}; {load_line()}")
    model, generator = build_models(sizes, device)
    n = sum(p.numel() for p in model.transformer.parameters())
    print(f"transformer {n / 1e6:.1f} M params, {sizes['S']} condition frames, grid {_grid(model)}; codebook "
          f"preset {sizes['codebook']}, MelGAN preset {sizes['vocoder']}")
    report: dict[str, Any] = {"device": device.type, "name": name, "smoke": smoke}
    report["static"] = static_equals_cached(model, sizes, device)
    report["clips"] = clips(model, generator, sizes, device)
    report["decode_share"] = decode_share(model, sizes, device)
    report["training"] = training(model, sizes, device)
    return report


def main() -> list[str]:
    report = run(smoke=os.environ.get("BENCH_GPU_SMOKE", "") not in ("", "0"))
    static = report["static"]
    lines = [f"{report['name']}{' (smoke)' if report['smoke'] else ''}: fp32 static decoder vs `sample`: "
             f"{100 * static['tokens_equal']:.1f}% greedy tokens equal, logits within {static['logit_diff']:.1e} std"]
    for batch, c in report["clips"].items():
        lines.append(f"batch {batch}: {1e3 * c['seconds_per_clip']:.1f} ms per clip bf16 end to end, "
                     f"{c['fp32_seconds_per_clip'] / c['seconds_per_clip']:.1f}x fp32; peak {c['peak_gib']:.2f} GiB")
    for what, rows in report["training"].items():
        lines.append(f"{what} training step: bf16 {rows['fp32']['seconds'] / rows['bf16']['seconds']:.2f}x fp32")
    if not static["exact"]:
        raise SystemExit(f"the static decoder's fp32 logits differ from `sample`'s by {static['logit_diff']:.1e} std")
    return lines


if __name__ == "__main__":
    main()
