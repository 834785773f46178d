"""Step-by-step sampling (the app's streamed spectrogram) and the last step's attention over the condition."""

from __future__ import annotations

import pytest
import torch

from models.gpt import GPTFeats
from pipeline.generate.sampling import last_step_attention, sample, sample_steps

GRID = (5, 8)  # a short grid; the window slides past 8 columns as on the paper's 5 x 53


def _tiny(S: int = 3) -> GPTFeats:
    torch.manual_seed(4)
    model = GPTFeats(vocab_size=12, block_size=40 + S, feat_depth=6, n_layer=2, n_head=2, n_embd=16).eval()
    with torch.no_grad():  # larger weights than the init: tokens and attention vary with the input
        for p in model.parameters():
            p.mul_(8)
    return model


@pytest.mark.parametrize("num_tokens", [40, 5 * 20])  # one window; a sliding one
def test_steps_drain_to_samples_tokens_one_token_at_a_time(num_tokens):
    model, feats = _tiny(), torch.randn(2, 6, 3)
    kw = dict(num_tokens=num_tokens, top_k=6, grid=GRID)
    expected = sample(model, feats, generator=torch.Generator().manual_seed(7), **kw)
    seen = []
    for done, tokens in sample_steps(model, feats, generator=torch.Generator().manual_seed(7), **kw):
        assert tokens.shape == (2, num_tokens)
        assert torch.equal(tokens[:, :done], expected[:, :done])  # the tokens so far are the final ones
        assert not tokens[:, done:].any()  # the rest still empty
        seen.append(done)
    assert seen == list(range(num_tokens + 1))
    assert torch.equal(tokens, expected)


def test_last_step_attention_is_the_step_that_picked_the_last_token():
    model = _tiny()
    feats = torch.randn(2, 6, 3)
    tokens = sample(model, feats, num_tokens=40, greedy=True, grid=GRID)
    att = last_step_attention(model, feats, tokens, grid=GRID)
    assert att.shape == (2, 3) and (att >= 0).all() and (att.sum(1) <= 1 + 1e-5).all() and (att.sum(1) > 0).all()
    # by hand: the forward the attention comes from predicts the last token (greedy), and its weights agree
    with torch.inference_mode():
        logits, full = model(tokens[:, :39], feats, return_attention=True)
    assert torch.equal(logits[:, 3 - 1 + 39].argmax(-1), tokens[:, 39])
    assert torch.allclose(att, full[:, :, 3 - 1 + 39, :3].mean(1))
    other = last_step_attention(model, torch.randn(2, 6, 3), tokens, grid=GRID)
    assert not torch.allclose(att, other)  # it depends on the condition


def test_last_step_attention_follows_the_sliding_window_and_condition():
    model = _tiny()
    feats = torch.randn(1, 6, 9)  # 3 frames per 8-column window, 24 columns
    tokens = sample(model, feats, num_tokens=120, greedy=True, slide_cond=True, grid=GRID)
    att = last_step_attention(model, feats, tokens, slide_cond=True, grid=GRID)
    js = 24 - 8  # the last window's first column
    window = feats[..., 6:9]  # round(16 * 9 / 24) = 6: the window's own 3 frames
    with torch.inference_mode():
        _, full = model(tokens[:, js * 5:119], window, return_attention=True)
    assert torch.allclose(att, full[:, :, 3 - 1 + 119 - js * 5, :3].mean(1))
