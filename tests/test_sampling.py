"""The KV-cached sampler against the original's procedure and its recorded greedy tokens."""

from __future__ import annotations

import pytest
import torch

from models.gpt import GPTClass, GPTFeats
from pipeline.generate.decoding import StaticDecoder, TokenSampler, decoding_path, describe, inference_copy
from pipeline.generate.sampling import (
    filter_logits,
    pick_token,
    sample,
    sample_uncached,
)
from pipeline.generate.settings import SamplingSettings


@pytest.fixture(scope="module")
def original(original_transformer_small):
    ckpt, io, cfg = original_transformer_small
    model = GPTFeats(**cfg["gpt"], feat_depth=2048).eval()
    model.load_state_dict(
        {k[len("transformer.") :]: v for k, v in ckpt.items() if k.startswith("transformer.")}
    )
    return model, io


GRID = (5, 8)  # a short 5 x 8 grid keeps the reference loop cheap; the procedure is the same as for 5 x 53


def tiny(S: int = 2, vocab: int = 12) -> GPTFeats:
    torch.manual_seed(1)
    model = GPTFeats(vocab_size=vocab, block_size=40 + S, feat_depth=6, n_layer=2, n_head=2, n_embd=16).eval()
    with torch.no_grad():  # larger weights than the init, so tokens vary and the test has teeth
        for p in model.parameters():
            p.mul_(8)
    return model


def test_greedy_cached_reproduces_the_originals_tokens(original):
    model, io = original
    tokens = sample(model, io["features"], greedy=True)
    assert tokens.shape == (2, 265) and tokens.dtype == torch.int64
    assert torch.equal(tokens, io["greedy_tokens"])


def test_reference_loop_reproduces_the_originals_tokens(original):
    model, io = original
    assert torch.equal(sample_uncached(model, io["features"], greedy=True), io["greedy_tokens"])


def test_cached_equals_uncached_greedy_with_varied_tokens():
    model = tiny()
    feats = torch.randn(3, 6, 2)
    cached = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    assert len(cached.unique()) > 3
    assert torch.equal(cached, sample_uncached(model, feats, num_tokens=40, greedy=True, grid=GRID))


def test_class_conditioned_sampling():
    torch.manual_seed(2)
    model = GPTClass(vocab_size=10, block_size=266, n_classes=4, n_layer=1, n_head=2, n_embd=16).eval()
    cls = torch.tensor([0, 3])
    assert torch.equal(
        sample(model, cls, num_tokens=40, greedy=True),
        sample_uncached(model, cls, num_tokens=40, greedy=True),
    )


def test_half_mode_keeps_the_primed_tokens():
    model = tiny()
    feats = torch.randn(2, 6, 2)
    gt = torch.randint(0, 12, (2, 265))
    kw = dict(mode="half", gt_tokens=gt, num_tokens=40, grid=GRID)
    out = sample(model, feats, top_k=5, generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(out[:, :20], gt[:, :20])  # (8 // 2) * 5; (53 // 2) * 5 = 130 on the paper's grid
    assert not torch.equal(out[:, 20:], gt[:, 20:40])
    assert torch.equal(
        sample(model, feats, greedy=True, **kw), sample_uncached(model, feats, greedy=True, **kw)
    )
    with pytest.raises(ValueError, match="gt_tokens"):
        sample(model, feats, mode="half")


def test_sliding_window_makes_5_x_53k_tokens_exactly_like_the_tool():
    model = tiny()
    feats = torch.randn(1, 6, 2)
    long = sample(model, feats, num_tokens=5 * 24, greedy=True, grid=GRID)  # 3 windows' worth of columns
    assert long.shape == (1, 120)
    assert torch.equal(long, sample_uncached(model, feats, num_tokens=120, greedy=True, grid=GRID))
    # sliding the condition too: 2 frames per 8 columns -> 6 frames for 24 columns
    feats_long = torch.randn(1, 6, 6)
    kw = dict(num_tokens=120, greedy=True, slide_cond=True, grid=GRID)
    assert torch.equal(sample(model, feats_long, **kw), sample_uncached(model, feats_long, **kw))
    with pytest.raises(ValueError, match="columns"):
        sample(model, feats, num_tokens=121, grid=GRID)


def test_sliding_window_on_the_paper_grid(original):
    model, io = original
    long = sample(model, io["features"][:1], num_tokens=5 * 106, greedy=True)
    assert long.shape == (1, 530)
    steps = [264, 265, 300, 529]  # spot checks of the reference (a full run costs 530 forward passes)
    ref = sample_uncached(model, io["features"][:1], num_tokens=530, greedy=True, gt_tokens=long, steps=steps)
    assert torch.equal(ref[:, steps], long[:, steps])


def test_sampling_is_reproducible_with_a_generator():
    model = tiny()
    feats = torch.randn(2, 6, 2)
    a = sample(
        model, feats, num_tokens=40, grid=GRID, generator=torch.Generator().manual_seed(3), temperature=1.5
    )
    b = sample(
        model, feats, num_tokens=40, grid=GRID, generator=torch.Generator().manual_seed(3), temperature=1.5
    )
    assert torch.equal(a, b)


def test_top_k_keeps_logits_at_least_the_kth_largest():
    logits = torch.tensor([[3.0, 1.0, 2.0, 2.0, -1.0, 0.5]])
    kept = torch.isfinite(filter_logits(logits, top_k=3))[0]
    assert kept.tolist() == [True, False, True, True, False, False]
    ties = torch.isfinite(filter_logits(logits, top_k=2))[0]  # the 2nd largest is tied: both stay
    assert ties.tolist() == [True, False, True, True, False, False]
    draws = pick_token(
        torch.randn(1, 50).expand(2000, 50), top_k=4, generator=torch.Generator().manual_seed(0)
    )
    assert len(draws.unique()) == 4


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.05, 0.3, 0.1, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_logits(logits, top_p=0.75))[0].tolist() == [True, False, True, False, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.85))[0].tolist() == [True, False, True, True, False]
    assert torch.isfinite(filter_logits(logits, top_p=0.1))[0].tolist() == [True, False, False, False, False]
    draws = pick_token(logits.expand(3000, 5), top_p=0.75, generator=torch.Generator().manual_seed(0))
    assert set(draws.unique().tolist()) == {0, 2}
    # a random distribution: what is kept reaches p, and without its least probable member it would not
    logits = torch.randn(4, 40) * 2
    kept = torch.isfinite(filter_logits(logits, top_p=0.9))
    p = torch.softmax(logits, -1)
    mass = (p * kept).sum(-1)
    least = torch.where(kept, p, torch.ones_like(p)).min(-1).values
    assert torch.all(mass >= 0.9 - 1e-6) and torch.all(mass - least < 0.9)


def test_inference_copies_leave_the_model_alone_and_stay_close():
    model = tiny()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats = torch.randn(2, 6, 2)
    tokens = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    with torch.no_grad():
        ref = model(tokens[:, :-1], feats)  # (2, 2 + 39, vocab)
    fused = inference_copy(model)  # fp32, query/key/value read as one product
    assert fused.blocks[0].attn.qkv.weight.shape == (48, 16) and not hasattr(fused.blocks[0].attn, "query")
    with torch.no_grad():
        torch.testing.assert_close(fused(tokens[:, :-1], feats), ref, rtol=1e-5, atol=1e-5)
    assert torch.equal(sample(fused, feats, num_tokens=40, greedy=True, grid=GRID), tokens)
    bf16 = inference_copy(model, dtype=torch.bfloat16)
    with torch.no_grad():
        logits = bf16(tokens[:, :-1], feats).float()
    assert (logits - ref).abs().max() < 0.1 * ref.abs().max()  # close, not exact
    assert sample(bf16, feats, num_tokens=40, top_k=4, grid=GRID).shape == (2, 40)
    assert model.pos_emb.dtype == torch.float32
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


# ------------------------------------------------------------------------- the stages' sampler, its fast path
def test_the_fast_paths_decoder_in_fp32_gives_samples_tokens():
    """The fast path's machinery (a static cache, one fixed-shape step per token) on the fp32 model: the exact
    sampler's tokens, for one window, a sliding one (the condition sliding too), mode half and seeded top-k."""
    model = tiny(S=3)
    feats = torch.randn(2, 6, 3)
    decoder = StaticDecoder(model, 2, 3, GRID)
    assert not decoder.graphs and not decoder.compiled  # CPU: eager
    greedy = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    assert len(greedy.unique()) > 3
    assert torch.equal(decoder.sample(feats, 40, greedy=True), greedy)
    assert torch.equal(decoder.sample(feats, 40, greedy=True), greedy)  # reused: the cache is reset
    kw = dict(top_k=5, temperature=1.3)
    seeded = sample(model, feats, num_tokens=40, grid=GRID, generator=torch.Generator().manual_seed(4), **kw)
    assert torch.equal(decoder.sample(feats, 40, generator=torch.Generator().manual_seed(4), **kw), seeded)
    half = dict(mode="half", gt_tokens=torch.randint(0, 12, (2, 40)), greedy=True)
    assert torch.equal(decoder.sample(feats, 40, **half), sample(model, feats, num_tokens=40, grid=GRID, **half))
    assert torch.equal(decoder.sample(feats, 120, greedy=True), sample(model, feats, num_tokens=120, greedy=True,
                                                                       grid=GRID))  # 24 columns: the window slides
    long_feats = torch.randn(2, 6, 9)  # 3 frames per 8-column window over 24 columns
    slide = dict(num_tokens=120, greedy=True, slide_cond=True, cond_frames=3)
    assert torch.equal(decoder.sample(long_feats, **slide), sample(model, long_feats, grid=GRID, **slide))
    with pytest.raises(ValueError, match="built for batch 2"):
        decoder.sample(torch.randn(1, 6, 3), 40)


def test_the_decoding_step_compiles_as_one_graph():
    """`GPT.step_static` traces without a graph break (what the CUDA fast path compiles with Inductor; here
    the AOT tracer alone, which runs on any machine) and gives the eager step's logits."""
    model = inference_copy(tiny(S=3))
    compiled = torch.compile(model.step_static, backend="aot_eager", fullgraph=True, dynamic=False)
    with torch.inference_mode():
        eager_cache, traced_cache = model.new_cache(2, 43, zeros=True), model.new_cache(2, 43, zeros=True)
        feats = torch.randn(2, 6, 3)
        model.prefill(torch.zeros(2, 0, dtype=torch.long), feats, eager_cache)
        model.prefill(torch.zeros(2, 0, dtype=torch.long), feats, traced_cache)
        for t, token in enumerate([3, 7, 1]):
            idx, pos = torch.full((2, 1), token), torch.tensor([3 + t])
            torch.testing.assert_close(compiled(idx, pos, traced_cache), model.step_static(idx, pos, eager_cache))
        torch.testing.assert_close(traced_cache.k, eager_cache.k)  # the cache written in place, as eagerly


def test_the_sampler_takes_the_fast_path_on_a_gpu_and_the_exact_one_on_a_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert decoding_path(cuda, "auto", True) == {"dtype": "bf16", "fast": True, "graphs": True, "compiled": True}
    assert describe(decoding_path(cuda, "auto", True)) == "bf16 static KV cache, compiled step at batch 1, CUDA graph"
    assert describe(decoding_path(cuda, "auto", True), 16) == "bf16 static KV cache, CUDA graph"  # compiled: batch 1
    assert decoding_path(cuda, "auto", False)["compiled"] is False
    assert decoding_path(cuda, "fp32", True) == {"dtype": "fp32", "fast": False, "graphs": False, "compiled": False}
    assert decoding_path(cpu, "auto", True) == {"dtype": "fp32", "fast": False, "graphs": False, "compiled": False}
    assert describe(decoding_path(cpu, "bf16", True)) == "bf16 static KV cache, eager"
    with pytest.raises(ValueError, match="sampling.precision must be one of auto, fp32, bf16"):
        decoding_path(cpu, "fp16", True)


def test_the_token_sampler_on_a_cpu():
    """`auto` on a CPU: the exact path on the model itself; `bf16`: the fast path on a bf16 copy, which
    `refresh()` gives the model's current weights."""
    model = tiny(S=3)
    feats = torch.randn(2, 6, 3)
    settings = SamplingSettings("nopix", 1.0, 5, None)
    exact = TokenSampler(model, "auto", True)
    assert str(exact) == "fp32 KV cache (exact)" and exact.gpt is model
    seeded = sample(model, feats, num_tokens=40, grid=GRID, generator=torch.Generator().manual_seed(2), top_k=5)
    tokens = exact.sample(feats, settings, 40, generator=torch.Generator().manual_seed(2))
    assert torch.equal(tokens, seeded)
    fast = TokenSampler(model, "bf16", True)
    assert str(fast) == "bf16 static KV cache, eager" and fast.gpt.pos_emb.dtype == torch.bfloat16
    made = fast.sample(feats, settings, 40, generator=torch.Generator().manual_seed(2))
    assert made.shape == (2, 40) and 0 <= made.min() and made.max() < 12
    assert list(fast._decoders) == [(2, 3)]  # one decoder per shape, kept
    with torch.no_grad():
        model.head.weight.mul_(-1)
    assert not torch.equal(fast.gpt.head.weight, model.head.weight.bfloat16())
    fast.refresh()
    assert torch.equal(fast.gpt.head.weight, model.head.weight.bfloat16())
