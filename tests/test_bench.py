"""The benchmarks' own machinery: the fixed-shape decoder `make bench-gpu` times, and bench-gpu's CPU smoke mode."""

from __future__ import annotations

import pytest
import torch

from models.gpt import GPTFeats
from pipeline.generate.sampling import StaticDecoder, sample

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


def test_static_decoder_gives_the_cached_samplers_tokens():
    model = tiny()
    feats = torch.randn(3, 6, 3)
    decoder = StaticDecoder(model, 3, 3, grid=GRID)
    assert not decoder.graphs  # CPU: eager
    greedy = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    assert len(greedy.unique()) > 3
    assert torch.equal(decoder.sample(feats, 40, greedy=True), greedy)
    assert torch.equal(decoder.sample(feats, 40, greedy=True), greedy)  # reused: the cache is reset
    kw = dict(top_k=5, temperature=1.3)
    seeded = sample(model, feats, num_tokens=40, grid=GRID, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(decoder.sample(feats, 40, generator=torch.Generator().manual_seed(4), **kw), seeded)
    gt = torch.randint(0, 12, (3, 40))
    half = dict(mode="half", gt_tokens=gt, greedy=True)
    assert torch.equal(decoder.sample(feats, 40, **half), sample(model, feats, num_tokens=40, grid=GRID, **half))


def test_static_decoder_refuses_other_shapes():
    decoder = StaticDecoder(tiny(), 2, 3, grid=GRID)
    with pytest.raises(ValueError, match="built for batch 2"):
        decoder.sample(torch.randn(1, 6, 3), 40)
    with pytest.raises(ValueError, match="one 5 x 8 window"):
        decoder.sample(torch.randn(2, 6, 3), 45)


def test_bench_gpu_smoke_mode_runs_every_part_on_cpu():
    from pipeline.bench import gpu

    report = gpu.run(smoke=True)
    assert report["device"] == "cpu" and report["smoke"]
    static = report["static"]  # the timed decoder against the exact sampler, fp32
    assert static["tokens_equal"] == 1.0 and static["logit_diff"] < 1e-5 and static["exact"]
    for batch in gpu.SMOKE["batches"]:
        clip = report["clips"][batch]
        assert clip["seconds_per_clip"] > 0 and clip["waveform_samples"] == gpu.SMOKE["num_tokens"] // 5 * 16 * 256
    for name in ("codebook", "transformer"):
        for dtype in ("fp32", "bf16"):
            step = report["training"][name][dtype]
            assert step["seconds"] > 0 and torch.isfinite(torch.tensor(step["loss"])) and step["peak_gib"] > 0


def test_bench_gpu_is_not_in_the_default_bench_run():
    from pipeline.bench.__main__ import default_names

    names = default_names()
    assert "gpu" not in names and "transformer_sampling" in names


def test_column_major_copy_is_exact_and_keeps_the_state_dict():
    from pipeline.generate.sampling import inference_copy

    model = tiny()
    feats = torch.randn(2, 6, 3)
    copy = inference_copy(model, fuse_qkv=False, column_major=True)
    mlp_in = copy.blocks[0].mlp[0].weight
    assert mlp_in.shape == (64, 16) and mlp_in.stride() == (1, 64)  # (out, in) values, (in, out) storage
    assert copy.blocks[0].mlp[2].weight.is_contiguous()  # a 4 n_embd-input layer keeps its layout
    want = model.state_dict()
    assert {k: v.shape for k, v in copy.state_dict().items()} == {k: v.shape for k, v in want.items()}
    assert all(torch.equal(v, want[k]) for k, v in copy.state_dict().items())
    greedy = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    assert torch.equal(sample(copy, feats, num_tokens=40, greedy=True, grid=GRID), greedy)
    fused = inference_copy(model, column_major=True)  # with fused qkv, as the benchmark times it
    assert torch.equal(sample(fused, feats, num_tokens=40, greedy=True, grid=GRID), greedy)
