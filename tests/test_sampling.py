"""The KV-cached sampler against the original's procedure and its recorded greedy tokens."""

from __future__ import annotations

import pytest
import torch

from models.gpt import GPTClass, GPTFeats
from pipeline.generate.sampling import (
    filter_logits,
    inference_copy,
    pick_token,
    sample,
    sample_uncached,
)


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


def test_opt_in_fast_copies_leave_the_model_alone_and_stay_close():
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
    for fast, tol in ((inference_copy(model, dtype=torch.bfloat16), 0.1), (inference_copy(model, int8=True), 0.1)):
        with torch.no_grad():
            logits = fast(tokens[:, :-1], feats).float()
        assert (logits - ref).abs().max() < tol * ref.abs().max()  # close, not exact
        assert sample(fast, feats, num_tokens=40, top_k=4, grid=GRID).shape == (2, 40)
    bf16 = sample(model, feats, num_tokens=40, greedy=True, grid=GRID, dtype=torch.bfloat16)  # copy per call
    assert bf16.shape == (2, 40) and model.pos_emb.dtype == torch.float32
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    with pytest.raises(ValueError, match="int8"):
        inference_copy(model, dtype=torch.bfloat16, int8=True)
