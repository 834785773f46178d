"""The training stages' inputs, checked before a model is built or a run folder is made
(`pipeline.config.check.StageChecks`): the split files of `data.train_split` / `data.val_split` list clips, and the
checkpoints a stage reads (train_transformer's frozen codebook; the vocoder of logged audio) exist or are released
names."""
from __future__ import annotations

from pipeline.data.layout import read_split
from pipeline.runs.inputs import require_checkpoint


def check_inputs(cfg) -> None:
    splits = cfg.dataset.get("splits") or {}
    for key in ("train_split", "val_split"):
        split = cfg.data.get(key)
        if split is None:
            continue
        if split not in splits:
            raise ValueError(f"data.{key}={split}: not a split of dataset {cfg.dataset.name} ({', '.join(splits)})")
        if not read_split(str(splits[split])):
            raise ValueError(f"data.{key}={split}: its file {splits[split]} lists no clips")
    if "transformer" in cfg and "codebook" in cfg:  # train_transformer: the frozen codebook
        require_checkpoint(cfg.codebook.ckpt, "codebook.ckpt", cfg, "train the codebook first (`python -m "
                           f"stages.train_codebook dataset={cfg.dataset.name}`: its run with no overrides is the "
                           "default) or pass a released name (vas_codebook, vggsound_codebook)")
    if cfg.get("vocoder") is not None and "ckpt" in cfg.vocoder:  # the vocoder of logged audio
        require_checkpoint(cfg.vocoder.ckpt, "vocoder.ckpt", cfg, "or leave it unset for Griffin-Lim")
