"""The transformer task's code cache: a clip's tokens are encoded once and equal what the frozen codebook gives
its mel; a rolled item gets its clip's tokens rolled by the same whole columns; the training loss on cached
tokens is the loss the wrapper computes from the spectrograms."""
from __future__ import annotations

import numpy as np
import torch

from pipeline.build.codebook import load_codebook
from pipeline.build.transformer import build_transformer
from pipeline.media.mel import CROP_LEN, FRAMES_PER_COLUMN
from tests.helpers import make_codebook, make_dataset, tiny_transformer_cfg


def _task(outputs):
    from pipeline.train.train_transformer import CodeCache, RolledColumns, TransformerTask

    make_dataset(outputs / "demo_data")
    cfg = tiny_transformer_cfg(53)
    cfg.codebook.ckpt = str(make_codebook(outputs / "codebook.pt"))
    task = TransformerTask(cfg)
    task.codebook = codebook = load_codebook(cfg.codebook.ckpt)
    codebook.loss = None
    torch.manual_seed(0)
    model = build_transformer(task.model_args(), codebook).eval()
    base = task._dataset("train", train=False)
    rolled = RolledColumns(base, columns=CROP_LEN // FRAMES_PER_COLUMN, frames_per_column=FRAMES_PER_COLUMN)
    return model, base, rolled, CodeCache(model.first_stage_permuter.H, FRAMES_PER_COLUMN)


def _batch(items):
    return {"image": torch.as_tensor(np.stack([i["image"] for i in items])),
            "feature": torch.as_tensor(np.stack([i["feature"] for i in items])),
            "id": [i["id"] for i in items],
            **({"rolled_columns": torch.tensor([i["rolled_columns"] for i in items])}
               if "rolled_columns" in items[0] else {})}


def test_cached_tokens_are_the_codebooks_and_follow_the_roll(outputs):
    model, base, rolled, cache = _task(outputs)
    plain = _batch([base[0], base[1]])
    x = plain["image"].float().unsqueeze(1)
    tokens = cache.tokens(model, plain, "train")
    torch.testing.assert_close(tokens, model.encode_to_tokens(x), rtol=0, atol=0)
    assert len(cache) == 2

    torch.manual_seed(3)
    item = rolled[0]
    k = item["rolled_columns"]
    assert k != 0
    again = cache.tokens(model, _batch([item]), "train")  # served from the cache: the clip's codes, rolled
    assert len(cache) == 2
    H = model.first_stage_permuter.H
    torch.testing.assert_close(again[0], torch.roll(tokens[0], k * H), rtol=0, atol=0)
    grid = again[0].view(-1, H)  # (columns, rows): whole columns moved, each column's rows kept together
    torch.testing.assert_close(grid, torch.roll(tokens[0].view(-1, H), k, 0), rtol=0, atol=0)

    fresh = type(cache)(H, 16)  # a rolled item seen first is unrolled before encoding: the same codes
    torch.testing.assert_close(fresh.tokens(model, _batch([item]), "train"), again, rtol=0, atol=0)
    torch.testing.assert_close(fresh.codes["train/" + item["id"]], cache.codes["train/" + item["id"]])


def test_loss_on_cached_tokens_equals_the_loss_from_spectrograms(outputs):
    from pipeline.data.datasets import batch_condition

    model, base, _, cache = _task(outputs)
    batch = _batch([base[0], base[2]])
    x, cond = batch["image"].float().unsqueeze(1), batch_condition(batch, "features")
    with torch.no_grad():
        expected = model(x, cond)
        got = model(None, cond, cache.tokens(model, batch, "train"))
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
