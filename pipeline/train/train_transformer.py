"""Training the stage-2 transformer: a GPT over the frozen codebook's tokens, conditioned on features or a class.

The wrapper (models.cond_transformer.Net2NetTransformer) holds the frozen codebook, the column-major permuter and
the GPT; only the GPT's parameters are optimised (AdamW, betas (0.9, 0.95), the original's two weight-decay
groups, lr = accumulation x processes x batch x base lr). Checkpoints are self-contained like the original's:
`state_dict` has `first_stage_model.*` (the codebook), `first_stage_permuter.*` and `transformer.*`, plus
`codebook: {"model_args", "source"}`, `features` (the features config the model was trained on: kind, depth,
weights, preprocessing) and `sampling` (the preset's sampling defaults), so that `load_transformer(path)` and the
sample stage need nothing else.

Every mismatch that can be seen from the files (a resumed last.pt trained with another condition size, a codebook
whose size is not the transformer's vocabulary, class ids beyond n_classes) is reported in `preflight`, before the
trainer starts.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import Dataset

from pipeline.build.codebook import load_codebook
from pipeline.build.transformer import (
    build_transformer,
    check_compatible,
    codebook_grid,
    model_args_from_stage,
)
from pipeline.build.vocoder import load_vocoder_or_griffinlim
from pipeline.checkpoints.reading import read_checkpoint
from pipeline.checkpoints.zoo import resolve
from pipeline.data.datasets import ConditionedDataset, batch_condition
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.settings import SamplingSettings
from pipeline.runs.folders import checkpoint_path
from pipeline.train.init_from import InitSource, freeze_all_but, matching, starts_fresh, transformer_source
from pipeline.train.loop import Task
from pipeline.train.media import log_spectrograms
from pipeline.train.run import train
from pipeline.train.sample_score import SampleScore, check_judge

log = logging.getLogger(__name__)


def features_record(features_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The features config as plain containers (what the sample stage needs to extract the same features)."""
    record = OmegaConf.to_container(features_cfg, resolve=True) if OmegaConf.is_config(features_cfg) \
        else dict(features_cfg)
    if record.get("weights") == "???":
        record["weights"] = None  # training reads pickles; the sample stage asks for weights when it needs them
    return record


def read_model_args(path: str | Path) -> dict[str, Any]:
    """`model_args` of one of our checkpoints without reading its tensors into memory (mmap)."""

    ckpt = read_checkpoint(path, mmap=True)
    if not isinstance(ckpt, dict) or "model_args" not in ckpt:
        raise ValueError(f"{path} holds no model_args: not a checkpoint of this pipeline")
    return dict(ckpt["model_args"])


def preflight(cfg: DictConfig, run_dir: str | Path | None) -> torch.nn.Module:
    """Checks the config against the files before any work starts; returns the frozen codebook.

    - `codebook.ckpt` must exist (its n_embed is the transformer's vocabulary, its latent grid of a data.crop_len
      clip the token grid: a grid the config states must be that one);
    - a `checkpoints/last.pt` being resumed must have the configured sizes, that vocabulary and that grid
      (check_compatible);
    - a class condition needs `transformer.n_classes` covering the data set's classes;
    - `transformer.init=time_aligned` needs a features condition;
    - `transformer.monitor=samples` needs a classifier of the data set's classes (`classifier.ckpt`) or the clips'
      events (`dataset.events`).
    """
    tcfg = cfg.transformer
    if tcfg.init not in ("original", "time_aligned"):
        raise ValueError(f"transformer.init must be original or time_aligned, got {tcfg.init!r}")
    if tcfg.init == "time_aligned" and tcfg.condition != "features":
        raise ValueError(f"transformer.init=time_aligned starts each token attending to its column's visual frames: it "
                         f"needs transformer.condition=features, not {tcfg.condition}; set transformer.init=original")

    path = resolve(cfg.codebook.ckpt, cfg=cfg)  # a path (file or log folder) or a released name, fetched if missing
    if not path.exists():
        raise FileNotFoundError(
            f"codebook.ckpt={path} does not exist: train the codebook first (`python -m stages.train_codebook "
            f"dataset={cfg.dataset.name}`, whose run with no overrides is the default path) or pass "
            f"codebook.ckpt=PATH (ours or the original's .ckpt)")

    codebook = load_codebook(path)
    wanted = model_args_from_stage(cfg, codebook)  # the sizes the model gets (a wrong grid or condition fails here)
    if run_dir is not None:
        last = checkpoint_path(run_dir, "last")
        if last.exists():
            check_compatible(read_model_args(last), tcfg, source=f"{last} (being resumed)",
                             vocab_size=wanted["vocab_size"], grid=wanted["grid"])
    if tcfg.condition == "class" and tcfg.get("n_classes") is None:
        raise ValueError("transformer.condition=class needs transformer.n_classes (VAS 8, VGGSound 309)")
    if tcfg.reinit and not tcfg.init_from:
        raise ValueError(f"transformer.reinit={list(tcfg.reinit)} starts some of transformer.init_from's weights "
                         f"afresh, but transformer.init_from is not set: set it, or transformer.reinit=null")
    if tcfg.monitor == "samples":
        check_judge(cfg)
    return codebook


def init_source(cfg: DictConfig, run_dir: str | Path | None, codebook: torch.nn.Module) -> InitSource | None:
    """The weights `transformer.init_from` names, checked to fit (`pipeline.train.init_from`); None without one or
    when the run folder has a last.pt to resume (the source is then not read)."""
    if not cfg.transformer.init_from or not starts_fresh(run_dir):
        return None
    return transformer_source(cfg, model_args_from_stage(cfg, codebook), codebook)


class RolledColumns(Dataset):
    """Training items circularly shifted in time by a random whole number of codebook columns, the mel and its
    condition's frames together (`transformer.roll_columns`; off in the paper presets).

    On a data set of a few clips a GPT can learn each clip's token sequence by heart, keyed by its condition;
    seen at every shift, a sound event only follows its visual event, which is what a demo with 16 training
    clips must learn. The shift keeps the codebook grid: `frames_per_column` mel frames per column, and
    feat_sample_size / columns condition rows per column (so feat_sample_size must be a multiple of columns).
    """

    def __init__(self, base: ConditionedDataset, columns: int, frames_per_column: int):
        size = int(base.sampler.size)
        if base.condition == "features" and size % columns:
            raise ValueError(f"transformer.roll_columns needs feat_sample_size to be a multiple of the {columns} "
                             f"codebook columns ({columns}, {2 * columns}, ...), not {size}: a shift must move the "
                             f"condition by whole rows; set transformer.roll_columns=false or change feat_sample_size")
        self.base, self.columns, self.frames_per_column = base, int(columns), int(frames_per_column)
        self.rows_per_column = size // columns

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = dict(self.base[index])
        k = int(torch.randint(0, self.columns, ()).item())  # from torch's generator, as the crops
        item["image"] = np.roll(item["image"], k * self.frames_per_column, axis=-1)
        item["rolled_columns"] = k  # the task rolls the clip's tokens by as many columns (CodeCache)
        if "feature" in item and self.base.condition == "features":
            item["feature"] = np.roll(item["feature"], k * self.rows_per_column, axis=0)
        return item


class CodeCache:
    """Each clip's codebook tokens, encoded once (the first time a batch holds the clip), in int16.

    The codebook is frozen and in eval mode, so without random crops a clip's tokens are the same at every
    epoch: the original re-encodes them at every step, which costs a tiny GPT's steps most of their time (the
    demo's: encoding 0.083 s, the GPT 0.030 s a step). Items rolled by RolledColumns are unrolled before
    encoding and their tokens rolled by the same whole columns (the seam's codes are the clip's own).
    """

    def __init__(self, rows: int, frames_per_column: int):
        self.rows, self.frames_per_column = int(rows), int(frames_per_column)
        self.codes: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return len(self.codes)

    def tokens(self, model: torch.nn.Module, batch: Mapping[str, Any], split: str) -> torch.Tensor:
        """(B, H * W) int64 column-major tokens of the batch's clips (as rolled), encoding the new ones."""
        x = batch["image"].float().unsqueeze(1)  # (B, 1, 80, crop_len)
        shifts = [int(k) for k in batch["rolled_columns"]] if "rolled_columns" in batch else [0] * len(x)
        keys = [f"{split}/{clip}" for clip in batch["id"]]
        new = [j for j, key in enumerate(keys) if key not in self.codes]
        if new:
            plain = torch.stack([torch.roll(x[j], -shifts[j] * self.frames_per_column, dims=-1) for j in new])
            for j, codes in zip(new, model.encode_to_tokens(plain)):
                self.codes[keys[j]] = codes.to(torch.int16).cpu()
        return torch.stack([torch.roll(self.codes[key].long(), k * self.rows)  # column-major: H tokens a column
                            for key, k in zip(keys, shifts)]).to(x.device)


class TransformerTask(Task):
    """The GPT of a Net2NetTransformer over a frozen codebook ("model" is the whole wrapper)."""

    kind = "transformer"

    def __init__(self, cfg: DictConfig):
        super().__init__()
        self.cfg = cfg
        self.tcfg = cfg.transformer
        # best.pt and early stopping by the validation loss, or by the judged samples' score (higher is better)
        self.monitor, self.monitor_mode = (("val/samples_score", "max") if self.tcfg.monitor == "samples"
                                           else ("val/loss", "min"))
        self.judge: SampleScore | None = None  # transformer.monitor=samples: made at the first validation
        self.batch_size = int(self.tcfg.optim.batch_size)
        self.condition = str(self.tcfg.condition)
        self.codebook = None  # the frozen codebook, loaded by preflight
        self.vocode = None
        self.sampler: TokenSampler | None = None  # the logged samples' (log_media)
        self.codes: CodeCache | None = None  # made by build unless data.random_crop (a clip's mel then varies)
        self.source: InitSource | None = None  # transformer.init_from's weights, read by preflight for a new run

    def preflight(self, run_dir: Path) -> None:
        self.codebook = preflight(self.cfg, run_dir)
        self.source = init_source(self.cfg, run_dir, self.codebook)

    def build(self) -> None:
        codebook = self.codebook
        codebook.loss = None  # inside the transformer the codebook has no loss (the original's DummyLoss)
        torch.manual_seed(int(self.cfg.seed))
        wrapper = build_transformer(self.model_args(), codebook)
        if self.tcfg.init == "time_aligned":  # the start of a run from scratch (with init_from: of what reinit names)
            wrapper.init_time_aligned()
        if self.source is not None:  # a new run from another model's weights (transformer.init_from)
            fresh = {f"transformer.{n}" for n in matching(wrapper.transformer, list(self.tcfg.reinit or []),
                                                           "transformer.reinit")}
            kept = {k: v for k, v in self.source.state_dict.items() if k not in fresh}
            wrapper.load_state_dict({**wrapper.state_dict(), **kept}, strict=True)
            log.info("starting from the weights of %s%s", self.source.describe(),
                     f" but {len(fresh)} parameter tensors started afresh (transformer.reinit)" if fresh else "")
            self.source = None
        if self.tcfg.trainable is not None:
            trained = freeze_all_but(wrapper.transformer, list(self.tcfg.trainable), "transformer.trainable")
            log.info("training %d of %d parameter tensors of the GPT (transformer.trainable)", len(trained),
                     len(list(wrapper.transformer.parameters())))
        optim = self.tcfg.optim
        lr = self.trainer.learning_rate(optim)
        log.info("%.2f M trainable parameters", sum(p.numel() for p in wrapper.transformer.parameters()
                                                     if p.requires_grad) / 1e6)
        self.modules = {"model": wrapper}
        groups = [{**group, "params": [p for p in group["params"] if p.requires_grad]}
                  for group in wrapper.transformer_param_groups(float(optim.weight_decay))]
        self.optimizers = {"transformer": torch.optim.AdamW(groups, lr=lr, betas=tuple(optim.betas),
                                                            **self.trainer.optimizer_options())}
        if not bool(self.cfg.data.random_crop):
            self.codes = CodeCache(wrapper.first_stage_permuter.H, int(codebook.downsample_factor))

    # --- data --------------------------------------------------------------------------------------------------
    def _dataset(self, split: str, train: bool) -> ConditionedDataset:
        data = self.cfg.data
        ds = ConditionedDataset(self.cfg.dataset, self.cfg.features, split, int(self.tcfg.feat_sample_size),
                                condition=self.condition, random_crop=bool(data.random_crop) and train,
                                spec_len=int(data.spec_len), crop_len=int(data.crop_len))
        if self.condition == "class" and ds.targets and max(ds.targets) >= int(self.tcfg.n_classes):
            raise ValueError(f"split {split!r} has class ids up to {max(ds.targets)} ({len(ds.classes)} classes) but "
                             f"transformer.n_classes is {self.tcfg.n_classes}: set transformer.n_classes="
                             f"{len(ds.classes)}")
        return ds

    def train_dataset(self):
        ds = self._dataset(self.cfg.data.train_split, train=True)
        if self.tcfg.roll_columns and self.condition != "class":
            W = codebook_grid(self.codebook, self.cfg.data.crop_len)[1]  # the codebook's columns of one clip
            return RolledColumns(ds, W, int(self.codebook.downsample_factor))
        return ds

    def val_dataset(self):
        return self._dataset(self.cfg.data.val_split, train=False)

    # --- steps -------------------------------------------------------------------------------------------------
    def _inputs(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"].float().unsqueeze(1)  # (B, 1, 80, 848)
        return x, batch_condition(batch, self.condition, x.device)

    def _tokens(self, batch, split: str) -> torch.Tensor | None:
        """The batch's tokens from the cache, or None to encode them in the forward pass (random crops)."""
        return None if self.codes is None else self.codes.tokens(self.trainer.unwrap("model"), batch, split)

    def train_step(self, batch, step: int) -> dict[str, torch.Tensor]:
        x, cond = self._inputs(batch)
        tokens = self._tokens(batch, "train")
        with self.trainer.autocast():
            loss = self.modules["model"](x, cond, tokens)  # codes in fp32, cross-entropy over B x 265 tokens
        self.trainer.backward(loss)
        self.trainer.clip_grad("model")
        self.optimizers["transformer"].step()
        self.optimizers["transformer"].zero_grad(set_to_none=True)
        return {"train/loss": loss.detach()}

    def val_step(self, batch) -> dict[str, torch.Tensor]:
        x, cond = self._inputs(batch)
        tokens = self._tokens(batch, "val")
        with self.trainer.autocast():
            loss = self.trainer.unwrap("model")(x, cond, tokens)
        return {"val/loss": loss.detach()}

    def validation_summary(self) -> dict[str, float]:
        """With `transformer.monitor=samples`: the validation clips sampled and judged (pipeline.train.sample_score),
        on the main process; every process gets its figures (they all decide on best.pt and early stopping)."""
        if self.tcfg.monitor != "samples":
            return {}
        accelerator = self.trainer.accelerator
        figures = [None]
        if accelerator.is_main_process:
            if self.judge is None:
                self.judge = SampleScore(self.trainer.unwrap("model"), self.cfg, int(self.cfg.seed))
            figures = [self.judge()]
        if accelerator.num_processes > 1:
            broadcast_object_list(figures)
        return figures[0]

    def log_media(self, batch, logger, step: int, split: str) -> None:
        """Inputs, their codebook reconstructions and a sample (cached sampler, from scratch) per condition."""

        if self.vocode is None:

            self.vocode = load_vocoder_or_griffinlim(self.cfg.vocoder.ckpt)
        n = int(self.cfg.media_samples)
        model = self.trainer.unwrap("model")
        x, cond = self._inputs(batch)
        x, cond = x[:n], cond[:n]
        sampling = SamplingSettings.from_config(self.tcfg.sampling, vocab=int(self.codebook.n_embed))
        sampling = dataclasses.replace(sampling, mode="nopix")  # from scratch, whatever the preset's mode
        if self.sampler is None:  # the stages' sampler (bf16 fast path on a GPU): made once, then given the weights
            self.sampler = TokenSampler.from_config(model, self.tcfg.sampling)
        else:
            self.sampler.refresh()
        tokens = self.sampler.sample(cond, sampling, model.num_tokens)
        specs = {"inputs": x, "reconstructions": model.decode_to_spec(model.encode_to_tokens(x)),
                 "samples_nopix": model.decode_to_spec(tokens)}
        log_spectrograms(logger, step, split, specs, vocode=self.vocode, max_items=n)

    # --- checkpoints -------------------------------------------------------------------------------------------
    def model_args(self) -> dict[str, Any]:
        return model_args_from_stage(self.cfg, self.codebook)  # vocabulary, grid and block_size from the codebook

    def extra_checkpoint(self) -> dict[str, Any]:
        model = self.trainer.unwrap("model")
        return {
            "version": 1,
            "codebook": {"model_args": dict(model.first_stage_model.model_args), "source": str(self.cfg.codebook.ckpt)},
            "features": features_record(self.cfg.features) if self.condition != "class" else None,
            "sampling": OmegaConf.to_container(self.tcfg.sampling, resolve=True),
            "dataset": {"name": str(self.cfg.dataset.name)},
        }


def run(cfg: DictConfig) -> dict[str, float]:
    """`python -m stages.train_transformer`: train in the run folder (a rerun with the same overrides resumes); returns
    the last metrics."""
    return train(TransformerTask(cfg), cfg)
