"""The GPT, the permuter and the Net2Net wrapper: shapes, masking, cache, init, and the original's numbers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.cond_transformer import Net2NetTransformer
from models.gpt import GPT, GPTClass, GPTFeats
from models.permuter import ColumnMajor


def tiny_feats(feat_depth: int = 8, S: int = 3, **kw) -> GPTFeats:
    torch.manual_seed(0)
    return GPTFeats(
        vocab_size=16, block_size=265 + S, feat_depth=feat_depth, n_layer=2, n_head=4, n_embd=32, **kw
    ).eval()


@pytest.fixture(scope="module")
def original_small(original_transformer_small):
    return original_transformer_small


def test_shapes_and_attention():
    model = tiny_feats()
    idx = torch.randint(0, 16, (2, 10))
    feats = torch.randn(2, 8, 3)
    logits = model(idx, feats)
    assert logits.shape == (2, 13, 16)
    logits2, att = model(idx, feats, return_attention=True)
    assert att.shape == (2, 4, 13, 13)
    torch.testing.assert_close(logits, logits2, atol=1e-5, rtol=1e-5)
    assert torch.all(att.triu(1) == 0)  # causal, condition included
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 266, dtype=torch.long), torch.randn(1, 8, 3))


def test_causal_masking_future_tokens_never_change_earlier_logits():
    model = tiny_feats()
    idx = torch.randint(0, 16, (2, 20))
    feats = torch.randn(2, 8, 3)
    base = model(idx, feats)
    changed = idx.clone()
    changed[:, 12:] = (changed[:, 12:] + 1) % 16
    out = model(changed, feats)
    torch.testing.assert_close(out[:, : 3 + 12], base[:, : 3 + 12], atol=0, rtol=0)
    assert not torch.allclose(out[:, 3 + 12 :], base[:, 3 + 12 :])


def test_cached_logits_equal_full_recomputation():
    model = tiny_feats()
    idx = torch.randint(0, 16, (2, 30))
    feats = torch.randn(2, 8, 3)
    full = model(idx, feats)  # (2, 33, 16)
    cache = model.new_cache(2)
    got = [model.prefill(idx[:, :10], feats, cache)]  # predicts position 10
    got.append(model.step(idx[:, 10:14], cache))  # several at once (chunked)
    for t in range(14, 30):
        got.append(model.step(idx[:, t], cache))
    assert cache.length == 33
    expected = torch.stack([full[:, 3 + 9], full[:, 3 + 13]] + [full[:, 3 + t] for t in range(14, 30)], dim=1)
    torch.testing.assert_close(torch.stack(got, dim=1), expected, atol=1e-5, rtol=1e-5)


def test_init_follows_the_original():
    model = GPTFeats(vocab_size=64, block_size=270, feat_depth=16, n_layer=2, n_head=4, n_embd=128)
    assert torch.all(model.pos_emb == 0)
    assert torch.all(model.blocks[0].ln1.weight == 1) and torch.all(model.blocks[0].ln1.bias == 0)
    assert torch.all(model.blocks[0].attn.key.bias == 0)
    assert abs(model.blocks[0].mlp[0].weight.std().item() - 0.02) < 0.002
    assert model.head.bias is None
    assert model.blocks[0].attn.mask.shape == (1, 1, 270, 270)
    assert "blocks.0.attn.mask" in model.state_dict()
    assert model.embedder.weight.std().item() > 0.05  # PyTorch's default init (created after the GPT init)
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


def test_class_and_no_feature_conditioning():
    torch.manual_seed(0)
    model = GPTClass(vocab_size=16, block_size=266, n_classes=8, n_layer=1, n_head=2, n_embd=16).eval()
    logits = model(torch.randint(0, 16, (3, 264)), torch.tensor([0, 5, 7]))
    assert logits.shape == (3, 265, 16)
    assert model.embedder.weight.shape == (8, 16)
    assert torch.equal(
        model(torch.zeros(1, 4, dtype=torch.long), torch.tensor([[5]])),
        model(torch.zeros(1, 4, dtype=torch.long), torch.tensor([5])),
    )
    # "No Feats": a GPTFeats with one random U[0, 1) vector (the data layer draws it), block 266
    nofeats = GPTFeats(vocab_size=16, block_size=266, feat_depth=2048, n_layer=1, n_head=2, n_embd=16).eval()
    assert nofeats(torch.randint(0, 16, (2, 264)), torch.rand(2, 2048, 1)).shape == (2, 265, 16)


def test_logits_equal_the_originals(original_small):
    ckpt, io, cfg = original_small
    model = GPTFeats(**cfg["gpt"], feat_depth=2048).eval()
    model.load_state_dict(
        {k[len("transformer.") :]: v for k, v in ckpt.items() if k.startswith("transformer.")}
    )
    with torch.no_grad():
        logits = model(io["tokens"], io["features"])
    torch.testing.assert_close(logits, io["logits"], atol=1e-4, rtol=1e-4)


def test_permuter_matches_the_original(original_small):
    ckpt, _, _ = original_small
    p = ColumnMajor(5, 53)
    assert p.forward_shuffle_idx.dtype == torch.int64
    assert torch.equal(p.forward_shuffle_idx, ckpt["first_stage_permuter.forward_shuffle_idx"])
    assert torch.equal(p.backward_shuffle_idx, ckpt["first_stage_permuter.backward_shuffle_idx"])
    raster = torch.arange(265).view(5, 53)  # cell (f, t) holds f * 53 + t
    seq = p(raster.view(1, -1))[0]
    assert seq[:7].tolist() == [0, 53, 106, 159, 212, 1, 54]
    long = torch.arange(5 * 106).view(1, -1)  # W = 106: index rebuilt
    assert p(long)[0, :6].tolist() == [0, 106, 212, 318, 424, 1]
    assert torch.equal(p(p(long), reverse=True), long)


class _FakeCodebook(torch.nn.Module):
    """A stand-in first stage: 'encodes' to fixed indices, decodes indices to their float values."""

    def __init__(self, indices: torch.Tensor):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.indices = indices

    def encode_indices(self, x):
        return self.indices

    def decode_code(self, indices):
        return indices.float()[:, None]


def test_wrapper_loss_is_the_originals_objective():
    torch.manual_seed(0)
    raster = torch.randint(0, 16, (2, 5, 53))
    model = Net2NetTransformer(_FakeCodebook(raster), tiny_feats(S=4))
    feats = torch.randn(2, 8, 4)
    tokens = model.encode_to_tokens(torch.zeros(2, 1, 80, 848))
    assert torch.equal(tokens, model.first_stage_permuter(raster.view(2, -1)))
    logits = model.transformer(tokens[:, :264], feats)  # S + 264 positions
    expected = F.cross_entropy(logits[:, 3:].reshape(-1, 16), tokens.reshape(-1))  # from position S - 1 on
    torch.testing.assert_close(model(torch.zeros(2, 1, 80, 848), feats), expected)
    assert torch.equal(model.decode_to_spec(tokens)[:, 0], raster.float())
    model.train()
    assert model.transformer.training and not model.first_stage_model.training
    assert not any(p.requires_grad for p in model.first_stage_model.parameters())
    decay, no_decay = model.transformer_param_groups(0.01)
    n_linear = sum(1 for m in model.transformer.modules() if isinstance(m, torch.nn.Linear))
    assert len(decay["params"]) == n_linear and decay["weight_decay"] == 0.01
    assert any(p is model.transformer.pos_emb for p in no_decay["params"])


def test_plain_gpt_without_condition():
    model = GPT(vocab_size=8, block_size=16, n_layer=1, n_head=2, n_embd=8)
    assert model(torch.zeros(2, 16, dtype=torch.long)).shape == (2, 16, 8)


def _copy_task(batch: int, H: int, W: int, depth: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column's H tokens are its frame's bit (token 1 when the frame shows an event, 30% of frames)."""
    bits = (torch.rand(batch, W, generator=generator) < 0.3).long()
    feats = torch.zeros(batch, depth, W)
    feats[:, 0], feats[:, 1] = 3.0 * bits, 1.0
    return bits[:, :, None].expand(batch, W, H).reshape(batch, -1), feats


def test_time_aligned_init_starts_each_token_on_its_own_frame():
    torch.manual_seed(0)
    H, W = 5, 53
    gpt = GPTFeats(vocab_size=16, block_size=W + H * W, feat_depth=8, n_layer=1, n_head=4, n_embd=64)
    wrapper = Net2NetTransformer(torch.nn.Identity(), gpt, ColumnMajor(H, W))
    columns = wrapper.position_columns(W)
    assert columns[:W].tolist() == list(range(W))  # frame j shows column j
    assert columns[W : W + 6].tolist() == [0, 0, 0, 0, 1, 1]  # the position of token i predicts token i + 1
    assert wrapper.position_columns(4 * W)[:8].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # 212 frames: 4 a column
    wrapper.init_time_aligned()
    tokens, feats = torch.randint(0, 16, (2, H * W - 1)), torch.randn(2, 8, W)
    _, att = gpt(tokens, feats, return_attention=True)  # block 0's attention (the only block)
    on_frames = att.mean(1)[:, W:, :W]  # token positions -> frames
    assert (on_frames.argmax(-1) == columns[W:-1]).float().mean() > 0.95  # each token's frame is the one it reads
    own = on_frames.gather(-1, columns[W:-1].expand(2, -1)[..., None])
    assert own.mean() > 0.5, own.mean()  # and most of its attention is there
    with pytest.raises(ValueError, match="times has shape"):
        gpt.init_time_aligned(columns[:-1], W)


def test_time_aligned_gpt_learns_when_its_frames_show_events():
    """The output follows the input: after 150 steps each column's first token (which only its frame tells)
    is predicted right for >= 95% of new clips' columns (always "no event": 70%)."""
    torch.manual_seed(0)
    H, W, depth = 5, 16, 4
    gpt = GPTFeats(vocab_size=2, block_size=W + H * W, feat_depth=depth, n_layer=2, n_head=4, n_embd=64)
    Net2NetTransformer(torch.nn.Identity(), gpt, ColumnMajor(H, W)).init_time_aligned()
    opt = torch.optim.AdamW(gpt.parameters(), lr=1e-3, betas=(0.9, 0.95))
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        tokens, feats = _copy_task(8, H, W, depth, g)
        loss = F.cross_entropy(gpt(tokens[:, :-1], feats)[:, W - 1 :].reshape(-1, 2), tokens.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    tokens, feats = _copy_task(64, H, W, depth, g)
    with torch.no_grad():
        first = gpt(tokens[:, :-1], feats)[:, W - 1 :][:, ::H].argmax(-1)  # each column's first token
    accuracy = (first == tokens[:, ::H]).float().mean().item()
    print(f"first-token accuracy {accuracy:.3f}")
    assert accuracy >= 0.95
