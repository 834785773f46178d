"""The benchmarks' own machinery: the fixed-shape step `make bench-gpu` times, bench-gpu's CPU smoke mode (every
part), which modules `make bench` runs, and the copies only the CPU benchmarks time."""

from __future__ import annotations

import math

import pytest
import torch

from models.gpt import GPTFeats
from pipeline.bench.copies import bench_copy
from pipeline.generate.sampling import sample

GRID = (5, 8)


def tiny(S: int = 3, vocab: int = 12) -> GPTFeats:
    torch.manual_seed(1)
    model = GPTFeats(vocab_size=vocab, block_size=40 + S, feat_depth=6, n_layer=2, n_head=2, n_embd=16).eval()
    with torch.no_grad():  # larger weights than the init, so tokens vary and equality has teeth
        for p in model.parameters():
            p.mul_(8)
    return model


def test_step_static_equals_the_cached_step():
    model = tiny()
    feats = torch.randn(2, 6, 3)
    with torch.inference_mode():
        dynamic, static = model.new_cache(2), model.new_cache(2, 3 + 40, zeros=True)
        model.prefill(torch.zeros(2, 0, dtype=torch.long), feats, dynamic)
        model.prefill(torch.zeros(2, 0, dtype=torch.long), feats, static)
        for t, token in enumerate([3, 7, 1, 11]):
            idx = torch.full((2, 1), token)
            want = model.step(idx, dynamic)
            got = model.step_static(idx, torch.tensor([3 + t]), static)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # spawns extraction workers; a minute or more on 2 cores
def test_bench_gpu_smoke_mode_runs_every_part_on_cpu(capsys):
    from pipeline.bench import gpu
    from pipeline.bench.paper_models import SMOKE

    report = gpu.run(smoke=True)
    assert report["device"] == "cpu" and report["smoke"]
    static = report["static"]  # the fast path's decoder against the exact sampler, fp32
    assert static["tokens_equal"] == 1.0 and static["logit_diff"] < 1e-5 and static["exact"]
    for batch in SMOKE["batches"]:  # through the sample stage's sampler (its fast path, eager on a CPU)
        clip = report["clips"][batch]
        assert clip["seconds_per_clip"] > 0 and clip["waveform_samples"] == SMOKE["num_tokens"] // 5 * 16 * 256
        assert clip["fp32_seconds_per_clip"] > 0 and clip["tokens_bound_s"] > 0
    assert report["compiled_logit_diff"] is None  # compiling is for CUDA
    step = report["decoding_step"]["sampler"]
    assert step["step_s"] > 0 and 0 < step["bound_share"] and step["kernels"] is None
    for name in ("codebook", "transformer"):
        rows = report["training"][name]
        assert set(rows) == {"original", "gpu"}  # the largest batches need a card's memory
        for row in rows.values():
            assert row["seconds"] > 0 and math.isfinite(row["loss"]) and row["samples_per_s"] > 0
        assert rows["gpu"]["flops_per_sample"] > 0
    features = report["extraction"]["features"]
    assert features["clips_per_s"] > 0 and features["baseline_clips_per_s"] > 0 and features["workers"] == 1
    out = capsys.readouterr().out
    for figure in ("ms per clip", "bandwidth bound", "MFU", "clips/s", "bench-gpu took"):
        assert figure in out, figure


def test_bench_runs_the_benchmarks_and_not_their_helpers():
    from pipeline.bench.__main__ import default_names

    names = default_names()
    assert "gpu" not in names and "transformer_sampling" in names
    assert not {"copies", "measure", "paper_models", "gpu_training", "gpu_extraction"} & set(names)


def test_the_column_major_copy_is_exact_and_keeps_the_state_dict():
    model = tiny()
    feats = torch.randn(2, 6, 3)
    copy = bench_copy(model, fuse_qkv=False, column_major=True)
    mlp_in = copy.blocks[0].mlp[0].weight
    assert mlp_in.shape == (64, 16) and mlp_in.stride() == (1, 64)  # (out, in) values, (in, out) storage
    assert copy.blocks[0].mlp[2].weight.is_contiguous()  # a 4 n_embd-input layer keeps its layout
    want = model.state_dict()
    assert {k: v.shape for k, v in copy.state_dict().items()} == {k: v.shape for k, v in want.items()}
    assert all(torch.equal(v, want[k]) for k, v in copy.state_dict().items())
    greedy = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    assert torch.equal(sample(copy, feats, num_tokens=40, greedy=True, grid=GRID), greedy)
    fused = bench_copy(model, column_major=True)  # with fused qkv, as the benchmark times it
    assert torch.equal(sample(fused, feats, num_tokens=40, greedy=True, grid=GRID), greedy)


def test_the_int8_copy_stays_close():
    model = tiny(S=2)
    feats = torch.randn(2, 6, 2)
    tokens = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    with torch.no_grad():
        ref = model(tokens[:, :-1], feats)
        logits = bench_copy(model, int8=True)(tokens[:, :-1], feats).float()
    assert (logits - ref).abs().max() < 0.1 * ref.abs().max()  # close, not exact
    with pytest.raises(ValueError, match="int8"):
        bench_copy(model, dtype=torch.bfloat16, int8=True)
