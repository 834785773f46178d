"""The `evaluate` stage (spec §7.2): FID, ISc, KID and MKL of generated spectrograms on Melception features.

Fakes are a sample run's `<samples_dir>/cls_<target>/<clip>_sample_<k>.npy` (float32 (80, 848), (x + 1) / 2 of the
model output, unclamped as the original). Reals are the data set's stored mels of the evaluation split,
centre-cropped to 848 (`reals: all`, as the original) or only those of the sampled clips (`reals: sampled`).
Both are normalised per mel bin with the classifier's statistics and fed to Melception:
'2048' for FID and KID, 'logits_unbiased' for ISc, 'logits' (softmax) for MKL, each fake paired with the real of
its clip. Feature extraction is split between the Accelerate processes and gathered; the main process computes
the metrics, writes `<samples_dir>/metrics.json` atomically and logs them as a W&B table.

Besides the paper's metrics: `class_match_rate`, how often the classifier puts a fake in the class of its clip,
against `chance` = 1 / classes (and `real_class_match_rate`, the same on the reals, for reference). It needs a
classifier trained on the data set's classes; with another one (e.g. the VGGSound Melception on VAS) it is null.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader, Dataset

from pipeline.data import Labels, mel_path, split_ids
from pipeline.data.features import center_offset
from pipeline.data.layout import require_files

log = logging.getLogger(__name__)

FEATURES = ("2048", "logits_unbiased", "logits")  # the original's features_list
SAMPLE_RE = re.compile(r"^(?P<vid>.+)_sample_(?P<k>\d+)\.npy$")
CLASS_DIR_RE = re.compile(r"^cls_(?P<target>\d+)$")


# ------------------------------------------------------------------------------------------- inputs
def find_samples(samples_dir: str | Path) -> list[tuple[Path, int, str]]:
    """(path, target, video name) of every `cls_<target>/<vid>_sample_<k>.npy`, sorted; `_mel` is kept in vid."""
    samples_dir = Path(samples_dir)
    if not samples_dir.is_dir():
        raise FileNotFoundError(f"samples_dir {samples_dir} does not exist: pass a sample run's samples/<split> "
                                f"folder (it holds cls_<target>/<clip>_sample_<k>.npy)")
    found = []
    for folder in sorted(p for p in samples_dir.iterdir() if p.is_dir() and CLASS_DIR_RE.match(p.name)):
        target = int(CLASS_DIR_RE.match(folder.name).group("target"))
        for path in sorted(folder.glob("*.npy")):
            m = SAMPLE_RE.match(path.name)
            if m:
                found.append((path, target, m.group("vid")))
    if not found:
        raise FileNotFoundError(f"no samples in {samples_dir}: expected cls_<target>/<clip>_sample_<k>.npy files")
    return found


def clip_id_of(vid: str, target: int, dataset_cfg: Mapping[str, Any], classes: Sequence[str]) -> str:
    """The split row of a fake: `<class>/<id>` for the VAS layout (cls_i = i-th sorted class), else the clip id."""
    vid = vid[: -len("_mel")] if vid.endswith("_mel") else vid  # VAS samples are named after the mel file
    if dataset_cfg["layout"] == "vas":
        if not 0 <= target < len(classes):
            raise ValueError(f"sample folder cls_{target} has no class: data set {dataset_cfg.get('name')!r} has "
                             f"{len(classes)} classes")
        return f"{classes[target]}/{vid}"
    return vid


class MelFiles(Dataset):
    """(index, [0, 1] mel (80, crop_len) float32) of a list of .npy files, centre-cropped when longer."""

    def __init__(self, paths: Sequence[Path], crop_len: int = 848):
        self.paths, self.crop_len = list(paths), int(crop_len)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        mel = np.load(self.paths[index])
        if mel.ndim != 2 or mel.shape[0] != 80 or mel.shape[1] < self.crop_len:
            raise ValueError(f"{self.paths[index]}: expected a mel (80, >= {self.crop_len}), got {mel.shape}; "
                             f"samples and reals must be (80, 848) or the stored (80, 860)")
        start = center_offset(mel.shape[1], self.crop_len)
        return index, torch.from_numpy(np.ascontiguousarray(mel[:, start:start + self.crop_len], dtype=np.float32))


# ----------------------------------------------------------------------------------------- classifier
def load_melception(ckpt: str, stats: str | None, device: torch.device):
    """(Melception in eval mode, Normalize, the classes it was trained on or None) from our or the original's file."""
    from pipeline.pretrained import load_classifier
    from pipeline.tasks.classifier import Normalize, read_stats

    model = load_classifier(ckpt, kind="melception").to(device)
    classes, norm = None, None
    try:
        obj = torch.load(ckpt, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - the original's checkpoint pickles numpy scalars: no stats inside anyway
        obj = None
    if isinstance(obj, dict) and obj.get("format") == "specvqgan-pipeline":
        classes = obj.get("classes")
        norm = obj.get("normalization")
    if norm is not None:
        normalize = Normalize(norm["mean"], norm["std"])
    elif stats and Path(stats).is_file():
        normalize = Normalize(*read_stats(stats))
    else:
        raise FileNotFoundError(f"{ckpt} holds no normalisation statistics and classifier.stats={stats!r} does not "
                                f"exist: pass the statistics file the classifier was trained with")
    return model, normalize.to(device), classes


@torch.no_grad()
def extract(model, normalize, paths: Sequence[Path], accelerator, batch_size: int, crop_len: int = 848,
            num_workers: int = 0, names: Sequence[str] = FEATURES) -> dict[str, np.ndarray]:
    """Melception features of `paths`, split between processes, gathered, in the order of `paths`."""
    loader = DataLoader(MelFiles(paths, crop_len), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    loader = accelerator.prepare(loader)
    chunks: dict[str, list[torch.Tensor]] = {"index": [], **{n: [] for n in names}}
    for index, mel in loader:
        feats = model.features(normalize(mel, zero_one=True), names)
        gathered = accelerator.gather_for_metrics((index, *[feats[n].float() for n in names]))
        for key, value in zip(["index", *names], gathered):
            chunks[key].append(value.cpu())
    order = torch.cat(chunks["index"]).argsort()
    return {n: torch.cat(chunks[n])[order].double().numpy() for n in names}


# -------------------------------------------------------------------------------------------- metrics
def compute_metrics(fake: Mapping[str, np.ndarray], fake_keys: Sequence[str], fake_targets: Sequence[int],
                    real: Mapping[str, np.ndarray], real_keys: Sequence[str], real_targets: Sequence[int],
                    class_match: bool) -> dict[str, Any]:
    """The paper's four metrics (spec §7.2) and the class match rates."""
    from pipeline.metrics import fid, inception_score, kid, mkl

    n_fake = len(fake_keys)
    splits = min(10, n_fake)  # the original's 10 splits need >= 10 fakes
    out: dict[str, Any] = {
        "frechet_inception_distance": fid(real["2048"], fake["2048"]),
        **inception_score(fake["logits_unbiased"], splits=splits),
        **kid(real["2048"], fake["2048"]),
        "kullback_leibler_divergence": mkl(fake["logits"], fake_keys, real["logits"], real_keys),
        "num_fakes": n_fake, "num_reals": len(real_keys), "isc_splits": splits,
    }
    num_classes = fake["logits"].shape[1]
    out["chance"] = 1.0 / num_classes
    if class_match:
        out["class_match_rate"] = float((fake["logits"].argmax(1) == np.asarray(fake_targets)).mean())
        out["real_class_match_rate"] = float((real["logits"].argmax(1) == np.asarray(real_targets)).mean())
    else:
        out["class_match_rate"] = out["real_class_match_rate"] = None
    return out


def run(cfg: DictConfig, folder: str | Path | None = None) -> dict[str, Any]:
    """Evaluate `cfg.samples_dir` against the reals of `cfg.split`; returns (and writes) the metrics.

    `folder` (the logger's run folder) defaults to Hydra's.
    """
    from accelerate import Accelerator

    from pipeline.io import save_json
    from pipeline.tasks.run import run_dir
    from pipeline.train.logger import Logger

    if cfg.reals not in ("all", "sampled"):
        raise ValueError(f"reals={cfg.reals!r}: use `all` (the split's clips, as the original) or `sampled`")
    accelerator = Accelerator(cpu=str(cfg.device) == "cpu")
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    labels = Labels(dataset)
    samples = find_samples(cfg.samples_dir)
    fake_keys = [clip_id_of(vid, target, dataset, labels.classes) for _, target, vid in samples]
    fake_targets = [target for _, target, _ in samples]
    split = split_ids(dataset, cfg.split)
    missing = sorted(set(fake_keys) - set(split))
    if missing:
        raise ValueError(f"{len(missing)} sampled clip(s) are not in split {cfg.split!r} of {dataset['name']}, e.g. "
                         f"{missing[:3]}: pass the split the samples were drawn from (split=...)")
    real_keys = split if cfg.reals == "all" else sorted(set(fake_keys))
    real_paths = [mel_path(dataset, k) for k in real_keys]
    require_files(real_paths, f"real mels of split {cfg.split!r}", "Fix: run `python -m stages.extract_mels`.")
    real_targets = [labels.target(k) for k in real_keys]

    model, normalize, trained_classes = load_melception(str(cfg.classifier.ckpt), cfg.classifier.get("stats"),
                                                        accelerator.device)
    num_classes = model.fc.out_features
    class_match = num_classes == len(labels.classes) and (trained_classes is None
                                                          or list(trained_classes) == list(labels.classes))
    if not class_match:
        log.warning("the classifier has %d classes, the data set %d (%s): class_match_rate needs a classifier "
                    "trained on this data set's classes; it is left null", num_classes, len(labels.classes),
                    dataset["name"])
    kwargs = dict(batch_size=int(cfg.batch_size), crop_len=int(cfg.crop_len), num_workers=int(cfg.num_workers))
    fake = extract(model, normalize, [p for p, _, _ in samples], accelerator, **kwargs)
    real = extract(model, normalize, real_paths, accelerator, **kwargs)
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        metrics = compute_metrics(fake, fake_keys, fake_targets, real, real_keys, real_targets, class_match)
        metrics.update({"samples_dir": str(cfg.samples_dir), "classifier": str(cfg.classifier.ckpt),
                        "split": str(cfg.split), "reals": str(cfg.reals), "dataset": dataset["name"]})
        out = Path(cfg.samples_dir) / str(cfg.metrics_file)
        save_json(out, metrics)
        logger = Logger(OmegaConf.to_container(cfg.logger, resolve=True), folder or run_dir(),
                        OmegaConf.to_container(cfg, resolve=True))
        try:
            rows = [[k, float(v)] for k, v in metrics.items() if isinstance(v, (int, float))]
            logger.log_table("evaluation/metrics", ["metric", "value"], rows)
            logger.log_metrics({f"evaluation/{k}": v for k, v in metrics.items()
                                if isinstance(v, (int, float)) and not isinstance(v, bool)}, 0)
        finally:
            logger.finish()
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        print(f"[evaluate] {len(samples)} fakes vs {len(real_keys)} reals: {shown}\n  written to {out}", flush=True)
    accelerator.wait_for_everyone()
    return metrics
