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
A metric on too few samples for its own definition is null with its reason in `notes` (`compute_metrics`).

Baselines and model checks (`pipeline.evaluate.model_checks`), each skipped with its reason when an input is absent:
`shuffled_class_match_rate` on a sample run with `condition_shuffle=true` (`shuffled_samples_dir`); `synchrony`
with the video's events (`events_file`) for the samples, the shuffled samples and the real mels; `codebook`
(`codebook.ckpt`) and `vocoder` (`vocoder.ckpt`) checks; `targets`, each measure beside its baseline, printed as
a table. `report.html` (`pipeline.evaluate.report`) is written beside metrics.json.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from pipeline.build.classifier import FEATURES, load_melception
from pipeline.checkpoints.zoo import (
    resolve,  # classifier.ckpt=melception, classifier.stats=vggsound_mel_stats: released
)
from pipeline.config.device import forces_cpu
from pipeline.data.conditions import center_offset
from pipeline.data.datasets import MelFiles
from pipeline.data.layout import Labels, audio_path, clip_source, mel_path, require_files, split_ids
from pipeline.evaluate.events import onset_frames
from pipeline.evaluate.metrics import fid, fid_too_few, inception_score, isc_too_few, kid, kid_too_few, mkl
from pipeline.evaluate.model_checks import (
    clip_event_frames,
    codebook_check,
    format_targets,
    load_real_mels,
    synchrony_check,
    targets,
    vocoder_check,
)
from pipeline.evaluate.report import ASSETS, ClipView, write_report
from pipeline.files.writes import save_json
from pipeline.media.audio import SR, save_wav
from pipeline.media.mel import HOP, SPEC_LEN
from pipeline.media.video import clip_duration, frame_times, mux_audio
from pipeline.runs.folders import run_folder
from pipeline.runs.inputs import require_checkpoint
from pipeline.runs.lock import hold_run_folder
from pipeline.runs.outcomes import Outcomes, say
from pipeline.train.logger import Logger

log = logging.getLogger(__name__)

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


# ----------------------------------------------------------------------------------------- classifier
@torch.no_grad()
def extract(model, normalize, paths: Sequence[Path], accelerator, batch_size: int, crop_len: int,
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
                    class_match: bool, isc_splits: int = 10, kid_subset_size: int = 1000,
                    degenerate: str = "skip") -> dict[str, Any]:
    """The paper's four metrics (spec §7.2) and the class match rates.

    A metric whose sets are too small for its own definition (`pipeline.evaluate.metrics.*_too_few`: ISc splits of < 2
    samples, KID subsets that are the whole of both sets, FID covariances of rank < a quarter of the feature
    dims) is null with its reason in `notes` (`degenerate="compute"`: computed anyway, as the original did, the
    note kept).
    MKL is defined per fake and needs no minimum.
    """

    if degenerate not in ("skip", "compute"):
        raise ValueError(f"degenerate_metrics={degenerate!r}: use skip (null, with the reason) or compute (the "
                         f"figure anyway, as the original printed it)")
    n_fake = len(fake_keys)
    notes: dict[str, str] = {}
    out: dict[str, Any] = {}

    def guarded(name: str, keys: Sequence[str], reason: str | None, compute) -> None:
        """Set `keys` from compute() (a float, or a dict of them), or to None with `reason` noted under `name`."""
        if reason:
            notes[name] = reason
        if reason and degenerate == "skip":
            out.update({k: None for k in keys})
        else:
            value = compute()
            out.update(value if isinstance(value, dict) else {keys[0]: value})

    fid_reason, fid_note = fid_too_few(real["2048"], fake["2048"])
    guarded("frechet_inception_distance", ["frechet_inception_distance"], fid_reason,
            lambda: fid(real["2048"], fake["2048"]))
    if fid_note:
        notes["frechet_inception_distance"] = fid_note
    guarded("inception_score", ["inception_score_mean", "inception_score_std"], isc_too_few(n_fake, isc_splits),
            lambda: inception_score(fake["logits_unbiased"], splits=isc_splits))
    kid_reason, kid_note = kid_too_few(len(real_keys), n_fake, kid_subset_size)
    guarded("kernel_inception_distance", ["kernel_inception_distance_mean", "kernel_inception_distance_std"],
            kid_reason, lambda: kid(real["2048"], fake["2048"], subset_size=kid_subset_size))
    if kid_note:
        notes["kernel_inception_distance"] = kid_note
    out["kullback_leibler_divergence"] = mkl(fake["logits"], fake_keys, real["logits"], real_keys)
    out.update({"num_fakes": n_fake, "num_reals": len(real_keys), "isc_splits": isc_splits,
                "kid_subset_size": min(kid_subset_size, n_fake, len(real_keys))})
    num_classes = fake["logits"].shape[1]
    out["chance"] = 1.0 / num_classes
    if class_match:
        out["class_match_rate"] = float((fake["logits"].argmax(1) == np.asarray(fake_targets)).mean())
        out["real_class_match_rate"] = float((real["logits"].argmax(1) == np.asarray(real_targets)).mean())
    else:
        out["class_match_rate"] = out["real_class_match_rate"] = None
    out["notes"] = notes
    return out


def _sample_index(path: Path) -> int:
    return int(SAMPLE_RE.match(path.name).group("k"))


def load_samples(samples_dir: str | Path, dataset: Mapping[str, Any], labels, split: str
                 ) -> tuple[list[tuple[Path, int, str]], list[str]]:
    """(find_samples rows, their clip ids); every clip must be in `split`."""
    samples = find_samples(samples_dir)
    keys = [clip_id_of(vid, target, dataset, labels.classes) for _, target, vid in samples]
    missing = sorted(set(keys) - set(split_ids(dataset, split)))
    if missing:
        raise ValueError(f"{len(missing)} sampled clip(s) of {samples_dir} are not in split {split!r} of "
                         f"{dataset['name']}, e.g. {missing[:3]}: pass the split the samples were drawn from "
                         f"(split=...)")
    return samples, keys


def shuffled_samples(cfg: DictConfig, dataset: Mapping[str, Any], labels) -> tuple[list, list[str]] | str:
    """The shuffled-condition sample run's (rows, clip ids), or why there is none."""
    folder = cfg.get("shuffled_samples_dir")
    if not folder or not Path(str(folder)).is_dir():
        return (f"no shuffled-condition samples at {folder}: run `python -m stages.sample condition_shuffle=true` "
                f"with the same settings, or pass shuffled_samples_dir=PATH")
    return load_samples(folder, dataset, labels, str(cfg.split))


def model_measures(cfg: DictConfig, dataset: Mapping[str, Any], fakes: Sequence[tuple[str, Path]],
                   shuffled: Sequence[tuple[str, Path]] | None, device: torch.device) -> dict[str, Any]:
    """Synchrony (samples, shuffled samples, real mels), codebook and vocoder checks
    (`pipeline.evaluate.model_checks`)."""

    def mels(rows):
        return [(clip, np.load(path)) for clip, path in rows]

    clips = sorted({clip for clip, _ in fakes})
    events = clip_event_frames(cfg.get("events_file"), dataset, clips)
    crop = int(cfg.crop_len)
    reals = dict(zip(clips, load_real_mels(dataset, clips, crop)))
    sync = synchrony_check(events, mels(fakes), None if shuffled is None else mels(shuffled), reals)
    split = str(cfg.split)
    train_split = str(cfg.train_split)
    train_ids = split_ids(dataset, train_split) if train_split in (dataset.get("splits") or {}) else []  # none: skip
    valid_ids = split_ids(dataset, split)
    codebook = codebook_check(OmegaConf.select(cfg, "codebook.ckpt"), dataset, train_ids, valid_ids, crop, device)
    vocoder = vocoder_check(OmegaConf.select(cfg, "vocoder.ckpt"), dataset, valid_ids, crop, device,
                            int(cfg.vocoder_clips))
    return {"synchrony": sync, "codebook": codebook, "vocoder": vocoder, "events": events}


def report_clips(folder: Path, dataset: Mapping[str, Any], samples: Sequence[tuple[Path, int, str]],
                 keys: Sequence[str], predicted: Sequence[str | None], events: Mapping[str, np.ndarray] | str,
                 labels, max_clips: int, crop: int) -> list:
    """The report's clips (sample 0 of each, at most `max_clips`): real wavs cut to the window and videos with the
    generated sound are written under `<folder>/report/`."""

    first: dict[str, int] = {}
    for j, (path, _, _) in enumerate(samples):
        clip = keys[j]
        if clip not in first or _sample_index(path) < _sample_index(samples[first[clip]][0]):
            first[clip] = j
    views = []
    for clip in sorted(first)[:max_clips]:
        j = first[clip]
        path = samples[j][0]
        stem = clip.replace("/", "__")
        real = load_real_mels(dataset, [clip], crop)[0]
        fake = np.load(path)
        offset = center_offset(SPEC_LEN, crop) * HOP  # samples before the window the models see
        real_wav = fake_wav = video = None
        stored = audio_path(dataset, clip)
        if stored.is_file():
            real_wav = f"{ASSETS}/{stem}_real.wav"
            save_wav(folder / real_wav, np.load(stored)[offset:offset + crop * HOP], SR, subtype="PCM_16")
        if path.with_suffix(".wav").is_file():
            import soundfile as sf

            fake_wav = path.with_suffix(".wav").relative_to(folder).as_posix()
            mp4, start = clip_source(dataset, clip) if dataset.get("videos") else (None, 0.0)
            if mp4 is not None and mp4.is_file():
                wave, _ = sf.read(path.with_suffix(".wav"), dtype="float32")
                seconds = clip_duration(frame_times(mp4))
                before = offset + round(start * SR)  # the window of a longer video plays where it lies
                wave = np.concatenate([np.zeros(before, np.float32), wave])[:round(seconds * SR)]  # in sync
                video = f"{ASSETS}/{stem}_generated.mp4"
                try:
                    mux_audio(mp4, wave, folder / video, sr=SR)
                except Exception as error:  # noqa: BLE001 - e.g. a VP8 picture mp4 cannot hold: the page goes on
                    log.warning("report: %s with its generated sound could not be written (%s: %s); the page "
                                "shows the clip without it", mp4, type(error).__name__, error)
                    video = None
        clip_events = None if isinstance(events, str) else events.get(clip)
        views.append(ClipView(clip, labels.label(clip), real, fake, clip_events, onset_frames(real),
                              onset_frames(fake), real_wav, fake_wav, video, predicted[j]))
    return views


def _flat_numbers(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if isinstance(value, Mapping):
            out.update(_flat_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def check_inputs(cfg: DictConfig) -> None:
    """Before a model loads (pipeline.config.check.StageChecks): the samples and the classifier. The baselines'
    inputs (shuffled samples, codebook, vocoder, events) are optional: each is skipped, with the reason, when absent."""
    find_samples(cfg.samples_dir)
    require_checkpoint(cfg.classifier.ckpt, "classifier.ckpt", cfg, "a Melception: train_classifier's, the original's "
                                                                    ".pt, or `melception` (released)")


def run(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Evaluate `cfg.samples_dir` against the reals of `cfg.split`; returns (and writes) the metrics.

    `run_dir` (the run folder: the logger's, the report's) defaults to Hydra's; one process holds it at a time.
    """
    with hold_run_folder(run_folder(run_dir)):
        return evaluate(cfg, run_dir)


def evaluate(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, Any]:
    """`run` in its run folder, held."""
    from accelerate import Accelerator

    if cfg.reals not in ("all", "sampled"):
        raise ValueError(f"reals={cfg.reals!r}: use `all` (the split's clips, as the original) or `sampled`")
    accelerator = Accelerator(cpu=forces_cpu(cfg.device))
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    labels = Labels(dataset)
    samples, fake_keys = load_samples(cfg.samples_dir, dataset, labels, str(cfg.split))
    fake_targets = [target for _, target, _ in samples]
    split = split_ids(dataset, cfg.split)
    real_keys = split if cfg.reals == "all" else sorted(set(fake_keys))
    real_paths = [mel_path(dataset, k) for k in real_keys]
    require_files(real_paths, f"real mels of split {cfg.split!r}", "Fix: run `python -m stages.extract_mels`.")
    real_targets = [labels.target(k) for k in real_keys]
    shuffled = shuffled_samples(cfg, dataset, labels)


    stats = resolve(cfg.classifier.get("stats"), cfg=cfg)
    model, normalize, trained_classes = load_melception(str(resolve(cfg.classifier.ckpt, cfg=cfg)),
                                                        None if stats is None else str(stats), accelerator.device)
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
    shuffled_logits = None if isinstance(shuffled, str) else extract(
        model, normalize, [p for p, _, _ in shuffled[0]], accelerator, names=("logits",), **kwargs)["logits"]
    metrics: dict[str, Any] = {}
    if accelerator.is_main_process:
        metrics = compute_metrics(fake, fake_keys, fake_targets, real, real_keys, real_targets, class_match,
                                  isc_splits=int(cfg.isc_splits),
                                  kid_subset_size=int(cfg.kid_subset_size),
                                  degenerate=str(cfg.degenerate_metrics))
        if isinstance(shuffled, str) or not class_match:
            metrics["shuffled_class_match_rate"] = None
            metrics["shuffled_note"] = shuffled if isinstance(shuffled, str) else "no classifier of these classes"
        else:
            targets_ = np.asarray([t for _, t, _ in shuffled[0]])
            metrics["shuffled_class_match_rate"] = float((shuffled_logits.argmax(1) == targets_).mean())
            metrics["num_shuffled_fakes"] = len(targets_)
        measures = model_measures(cfg, dataset, list(zip(fake_keys, [p for p, _, _ in samples])),
                                  None if isinstance(shuffled, str) else list(zip(shuffled[1],
                                                                                  [p for p, _, _ in shuffled[0]])),
                                  accelerator.device)
        events = measures.pop("events")
        metrics.update(measures)
        metrics.update({"samples_dir": str(cfg.samples_dir), "classifier": str(cfg.classifier.ckpt),
                        "split": str(cfg.split), "reals": str(cfg.reals), "dataset": dataset["name"],
                        "shuffled_samples_dir": None if isinstance(shuffled, str) else str(cfg.shuffled_samples_dir)})
        metrics["targets"] = targets(metrics, int(cfg.min_samples))
        out = Path(cfg.samples_dir) / str(cfg.metrics_file)
        save_json(out, metrics)
        page = None
        if cfg.report:

            predicted = ([labels.classes[i] for i in fake["logits"].argmax(1)] if class_match
                         else [None] * len(samples))
            clips = report_clips(Path(cfg.samples_dir), dataset, samples, fake_keys, predicted, events, labels,
                                 int(cfg.report_clips), int(cfg.crop_len))
            page = write_report(cfg.samples_dir, metrics, clips, name=str(cfg.report_file))
        logger = Logger(OmegaConf.to_container(cfg.logger, resolve=True), run_folder(run_dir),
                        OmegaConf.to_container(cfg, resolve=True))
        try:
            numbers = _flat_numbers({k: v for k, v in metrics.items() if k != "targets"})
            logger.log_table("evaluation/metrics", ["metric", "value"], [[k, v] for k, v in numbers.items()])
            logger.log_metrics({f"evaluation/{k}": v for k, v in numbers.items()}, 0)
            logger.log_table("evaluation/targets", ["measure", "value", "baseline", "target", "met"],
                             [[r["measure"], r["value"], r["baseline"], r["target"], str(r["met"])]
                              for r in metrics["targets"]])
        finally:
            logger.finish()
        shown = " ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, float))
        say(f"[evaluate] {len(samples)} fakes vs {len(real_keys)} reals: {shown}")
        for name, note in metrics["notes"].items():
            say(f"  {name}: null or caveat: {note}")
        say(format_targets(metrics["targets"]))
        done = Outcomes("evaluate")
        for path in (out, page):
            if path:
                done.written(path)
        done.finish()
    accelerator.wait_for_everyone()
    return metrics
