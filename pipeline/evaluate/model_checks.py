"""Does each trained model follow its input? Measures of the codebook, the vocoder and the generated samples'
timing, each beside a baseline computed in the same run (the evaluate stage calls them; spec-free additions).

    codebook_check   validation L1 of the reconstructions vs predicting the training mean mel for every clip,
                     and the share of the codebook's codes used on validation
    vocoder_check    the mel of the vocoded audio of every clip is nearer (L1) to that clip's mel than to any
                     other clip's; the vocoded audio's level (RMS) against the real audio's, in dB; mel L1 and
                     level of MelGAN beside Griffin-Lim's on the same mels
    synchrony_check  share of the video's events with a generated sound onset within one codebook column
                     (`pipeline.evaluate.events`), for the samples, the shuffled-condition samples and the real mels
    targets          the demo's targets, each measure beside its baseline, met or not

Every check returns a dict; when an input is absent it returns {"skipped": reason} instead.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.build.codebook import load_codebook
from pipeline.build.vocoder import load_vocoder_or_griffinlim
from pipeline.checkpoints.reading import read_checkpoint
from pipeline.data.conditions import center_offset
from pipeline.data.datasets import load_mel_crop
from pipeline.data.layout import audio_path, clip_source, mel_path, require_files
from pipeline.evaluate.events import clip_events, loop_period_samples, read_events, synchrony
from pipeline.media.mel import HOP, mel_spectrogram, unit_mel

log = logging.getLogger(__name__)

LEVEL_TOLERANCE_DB = 3.0  # the vocoded audio's RMS within this of the real audio's: as loud as the clip it voices
GRIFFIN_LIM_CLIPS = 8  # the Griffin-Lim reference (~1 CPU s a clip) is computed on the first clips only


def load_real_mels(dataset_cfg: Mapping[str, Any], ids: Sequence[str], crop: int) -> np.ndarray:
    """(N, 80, crop) float32 centre crops of the stored [0, 1] mels of `ids`."""
    paths = [mel_path(dataset_cfg, i) for i in ids]
    require_files(paths, "real mels", "Fix: run `python -m stages.extract_mels`.")
    return np.stack([load_mel_crop(path, crop) for path in paths]) if paths else np.empty((0, 80, crop), np.float32)


def _missing(path: str | None, what: str, fix: str) -> str | None:
    if not path:
        return f"no {what} given: {fix}"
    if not Path(str(path)).is_file():
        return f"{what} {path} does not exist: {fix}"
    return None


# ------------------------------------------------------------------------------------------------ codebook
def gan_steps(ckpt: str) -> dict[str, Any]:
    """{"trained_steps", "gan_steps"}: how many of the checkpoint's training steps had the GAN loss on
    (step - disc_start, with disc_factor > 0); None for files that do not record it (the original's)."""

    obj = read_checkpoint(ckpt, mmap=True)
    obj = obj if isinstance(obj, dict) else {}
    loss, state = obj.get("loss_args") or {}, obj.get("train_state") or {}
    if "disc_start" not in loss or "step" not in state:
        return {"trained_steps": None, "gan_steps": None}
    step = int(state["step"])
    on = float(loss.get("disc_factor", 1.0)) > 0
    return {"trained_steps": step, "gan_steps": max(0, step - int(loss["disc_start"])) if on else 0}


@torch.no_grad()
def codebook_check(ckpt: str | None, dataset_cfg: Mapping[str, Any], train_ids: Sequence[str],
                   valid_ids: Sequence[str], crop: int, device: torch.device, batch_size: int = 8) -> dict[str, Any]:
    """Validation L1 (in the [0, 1] mel) of the codebook's reconstructions vs the training-mean baseline; codes used."""
    reason = _missing(ckpt, "codebook checkpoint", "train one with `python -m stages.train_codebook` or pass "
                                                     "codebook.ckpt=PATH")
    if reason:
        return {"skipped": reason}
    if not train_ids:
        return {"skipped": "no training clips for the training-mean baseline: the data set needs the split "
                           "named by train_split"}

    model = load_codebook(ckpt, map_location="cpu").to(device).eval()
    mean = np.zeros((80, crop), dtype=np.float64)
    for start in range(0, len(train_ids), 64):  # streamed: VAS has thousands of training clips
        mean += load_real_mels(dataset_cfg, train_ids[start:start + 64], crop).sum(0)
    mean /= max(len(train_ids), 1)
    valid = load_real_mels(dataset_cfg, valid_ids, crop)
    l1, used = [], torch.zeros(model.n_embed, dtype=torch.bool)
    for start in range(0, len(valid), batch_size):
        x = torch.from_numpy(valid[start:start + batch_size]).to(device)[:, None] * 2 - 1  # (b, 1, 80, crop)
        indices = model.encode_indices(x)
        rec = unit_mel(model.decode_code(indices)[:, 0].float().cpu().numpy())
        l1.extend(np.abs(rec - valid[start:start + batch_size]).mean(axis=(1, 2)))
        used[indices.flatten().unique().cpu()] = True
    baseline = np.abs(valid - mean[None]).mean(axis=(1, 2))
    return {**gan_steps(ckpt), "l1": float(np.mean(l1)), "mean_spectrogram_l1": float(baseline.mean()),
            "l1_ratio": float(np.mean(l1) / baseline.mean()), "codes_used": int(used.sum()),
            "n_embed": int(model.n_embed), "codes_used_share": float(used.float().mean()),
            "clips": len(valid_ids), "train_clips": len(train_ids), "ckpt": str(ckpt)}


# ------------------------------------------------------------------------------------------------- vocoder
def vocoder_check(ckpt: str | None, dataset_cfg: Mapping[str, Any], valid_ids: Sequence[str], crop: int,
                  device: torch.device, max_clips: int = 64) -> dict[str, Any]:
    """For every clip (the first `max_clips`): is the mel of its vocoded audio nearest (L1) to its own mel?"""
    reason = _missing(ckpt, "vocoder checkpoint", "train one with `python -m stages.train_vocoder` or pass "
                                                   "vocoder.ckpt=PATH")
    if reason:
        return {"skipped": reason}
    if len(valid_ids) < 2:
        return {"skipped": f"{len(valid_ids)} validation clip(s): telling clips apart needs at least 2"}

    ids = list(valid_ids)[:max_clips]
    mels = load_real_mels(dataset_cfg, ids, crop)
    reference = slice(0, GRIFFIN_LIM_CLIPS)

    def vocoded(vocode, chosen: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
        """(waves (N, 256 * crop), their mels (N, 80, crop))."""
        waves = np.concatenate([vocode(torch.from_numpy(mel[None]).to(vocode.device)).cpu().numpy()
                                for mel in mels[chosen]])  # a clip at a time: memory stays flat
        return waves, np.stack([mel_spectrogram(w)[:, :crop] for w in waves])

    melgan_waves, melgan = vocoded(load_vocoder_or_griffinlim(ckpt, device=device))
    griffinlim_waves, griffinlim = vocoded(load_vocoder_or_griffinlim(None), reference)
    distances = np.abs(melgan[:, None] - mels[None]).mean(axis=(2, 3))  # (vocoded i, real j)
    nearest = distances.argmin(axis=1)
    own = np.diag(distances)
    others = np.where(np.eye(len(ids), dtype=bool), np.inf, distances).min(axis=1)
    return {"identified_share": float((nearest == np.arange(len(ids))).mean()), "chance": 1 / len(ids),
            "clips": len(ids), "mel_l1": float(own.mean()),
            "griffinlim_mel_l1": float(np.abs(griffinlim - mels[reference]).mean(axis=(1, 2)).mean()),
            "griffinlim_clips": len(griffinlim), "nearest_other_mel_l1": float(others.mean()),
            **vocoded_level(dataset_cfg, ids, crop, melgan_waves, griffinlim_waves),
            "misidentified": [ids[i] for i in np.flatnonzero(nearest != np.arange(len(ids)))], "ckpt": str(ckpt)}


def vocoded_level(dataset_cfg: Mapping[str, Any], ids: Sequence[str], crop: int, melgan: np.ndarray,
                  griffinlim: np.ndarray) -> dict[str, Any]:
    """How loud the vocoded audio is against the real audio of the same `crop` frames (`<id>_audio.npy`, written by
    the mel stage): {"level_db": 20 log10 of the RMS ratio over all clips, "clip_level_db": (lowest, highest) of
    the clips, "griffinlim_level_db" over the first clips}; {"level_skipped": reason} without the real audio."""
    paths = [audio_path(dataset_cfg, i) for i in ids]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        return {"level_skipped": f"no real audio for {len(missing)} clip(s), e.g. {missing[0]}: the mel stage "
                                 f"writes <id>_audio.npy beside each mel"}
    starts = [center_offset(np.load(mel_path(dataset_cfg, i), mmap_mode="r").shape[1], crop) * HOP for i in ids]
    real = np.stack([np.load(p)[start:start + melgan.shape[1]].astype(np.float64) for p, start in zip(paths, starts)])
    if real.shape != melgan.shape:
        return {"level_skipped": f"real audio of {real.shape[1]} samples, vocoded {melgan.shape[1]}: re-extract "
                                 f"the mels and audio with `python -m stages.extract_mels`"}

    def decibels(fake: np.ndarray, true: np.ndarray, axis=None) -> np.ndarray:
        rms = lambda x: np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=axis))  # noqa: E731
        return 20 * np.log10(np.maximum(rms(fake), 1e-12) / np.maximum(rms(true), 1e-12))

    clips = decibels(melgan, real, axis=1)
    return {"level_db": float(decibels(melgan, real)), "clip_level_db": [float(clips.min()), float(clips.max())],
            "griffinlim_level_db": float(decibels(griffinlim, real[:len(griffinlim)]))}


# ----------------------------------------------------------------------------------------------- synchrony
def clip_event_frames(events_file: str | None, dataset_cfg: Mapping[str, Any], clip_ids: Sequence[str]
                      ) -> dict[str, np.ndarray] | str:
    """clip id -> event frames in the 848-frame window (loops expanded), or the reason there are none."""

    if not events_file or not Path(str(events_file)).is_file():
        return (f"no events file ({events_file}): synchrony needs each clip's event onsets, as the demo data "
                f"set's events.json (dataset.events)")
    onsets = read_events(events_file)
    absent = [c for c in clip_ids if c not in onsets]
    if absent:
        return f"{len(absent)} clip(s) have no events in {events_file}, e.g. {absent[0]}"
    frames = {}
    for clip in clip_ids:
        video, start = clip_source(dataset_cfg, clip)
        if not video.is_file():
            return f"{video} does not exist: the loop period of a short clip is read from its video"
        frames[clip] = clip_events(onsets[clip], None if start else loop_period_samples(video))  # a window: no loop
    return frames


def synchrony_check(events: Mapping[str, np.ndarray] | str, fakes: Sequence[tuple[str, np.ndarray]],
                    shuffled: Sequence[tuple[str, np.ndarray]] | None, reals: Mapping[str, np.ndarray]
                    ) -> dict[str, Any]:
    """Synchrony of (clip id, mel) fakes, of shuffled-condition fakes (judged against the events of the clip
    they are filed under, whose video did not condition them) and of the real mels (the ceiling)."""

    if isinstance(events, str):
        return {"skipped": events}
    out: dict[str, Any] = {"samples": synchrony([(events[c], m) for c, m in fakes]),
                           "real": synchrony([(events[c], reals[c]) for c in sorted(reals)])}
    out["shuffled"] = (synchrony([(events[c], m) for c, m in shuffled]) if shuffled is not None
                       else {"rate": None, "reason": "no shuffled-condition samples"})
    return out


# ------------------------------------------------------------------------------------------------- targets
# each target's stable key (the measure's wording carries counts) and which way its value is better: what
# `make demo-seeds` needs to find the worst seed of each
BETTER = {"classifier_top1": "higher", "class_match": "higher", "class_match_shuffled": "lower",
          "synchrony": "higher", "synchrony_real": "higher", "codebook_l1": "lower", "codebook_gan_steps": "higher",
          "codebook_codes_used": "higher", "vocoder_identified": "higher", "vocoder_level": "nearer 0",
          "vocoder_mel_l1": "lower"}


def _row(key: str, measure: str, value, baseline, baseline_is: str, target: str, met: bool | None, note: str = ""):
    return {"key": key, "measure": measure, "value": value, "baseline": baseline, "baseline_is": baseline_is,
            "target": target, "met": met, "note": note, "better": BETTER[key]}


def targets(m: Mapping[str, Any], min_samples: int = 32) -> list[dict[str, Any]]:
    """The demo's targets (issue 11) from the evaluate stage's metrics; `met` None where a measure is absent."""
    chance = m.get("chance")
    rows = []
    one = "one class (an unlabelled folder): nothing to tell apart" if chance == 1 else ""
    top1 = m.get("real_class_match_rate")
    rows.append(_row("classifier_top1",
                     "classifier top-1 on the real validation clips", top1, chance, "chance", ">= 0.95",
                     None if top1 is None or one else top1 >= 0.95, one))
    match, n = m.get("class_match_rate"), m.get("num_fakes", 0)
    rows.append(_row("class_match", f"class match of generated samples ({n} samples)", match, chance, "chance",
                     f">= 0.9 over >= {min_samples} samples",
                     None if match is None or one else bool(match >= 0.9 and n >= min_samples), one))
    shuffled = m.get("shuffled_class_match_rate")
    # the class comes from the picture: with other clips' pictures the rate falls at least to half (and towards
    # chance: half-way at least, which the half implies), and the conditioned rate is above chance
    fall = None if shuffled is None or match is None or one else bool(
        match > chance and match >= 2 * shuffled and shuffled <= (match + chance) / 2)
    rows.append(_row("class_match_shuffled",
                     "class match, visual condition shuffled across clips", shuffled, chance, "chance",
                     "conditioned >= 2x this", fall, one or m.get("shuffled_note", "")))
    sync = m.get("synchrony") or {}
    if "skipped" in sync or not sync:
        rows.append(_row("synchrony",
                         "synchrony (events with a sound onset within 16 frames)", None, None, "shuffled condition",
                         ">= 0.7 and >= 2x baseline", None, sync.get("skipped", "not computed")))
    else:
        value, base = sync["samples"]["rate"], sync["shuffled"]["rate"]
        met = None if value is None or base is None else bool(value >= 0.7 and value >= 2 * base)
        rows.append(_row("synchrony", "synchrony (events with a sound onset within 16 frames)", value, base,
                         "shuffled condition", ">= 0.7 and >= 2x baseline", met))
        rows.append(_row("synchrony_real",
                         "synchrony of the real mels (ceiling)", sync["real"]["rate"], None, "", "reference", None))
    cb = m.get("codebook") or {}
    if "skipped" in cb or not cb:
        rows.append(_row("codebook_l1",
                         "codebook validation L1", None, None, "mean spectrogram", "<= 0.5 x baseline", None,
                         cb.get("skipped", "not computed")))
    else:
        rows.append(_row("codebook_l1",
                         "codebook validation L1", cb["l1"], cb["mean_spectrogram_l1"], "mean spectrogram",
                         "<= 0.5 x baseline", bool(cb["l1"] <= 0.5 * cb["mean_spectrogram_l1"])))
        if cb.get("gan_steps") is not None:
            rows.append(_row("codebook_gan_steps",
                             f"codebook steps trained with its GAN on (of {cb['trained_steps']})", cb["gan_steps"],
                             None, "", "> 0, as the paper", bool(cb["gan_steps"] > 0)))
        rows.append(_row("codebook_codes_used",
                         f"codebook codes used on validation ({cb['codes_used']} of {cb['n_embed']})",
                         cb["codes_used_share"], 1 / cb["n_embed"], "one code", ">= 0.5",
                         bool(cb["codes_used_share"] >= 0.5)))
    voc = m.get("vocoder") or {}
    if "skipped" in voc or not voc:
        rows.append(_row("vocoder_identified",
                         "vocoder: clips whose vocoded mel is nearest their own", None, None, "chance", "all", None,
                         voc.get("skipped", "not computed")))
    else:
        rows.append(_row("vocoder_identified",
                         f"vocoder: clips whose vocoded mel is nearest their own ({voc['clips']} clips)",
                         voc["identified_share"], voc["chance"], "chance", "all (1.0)",
                         bool(voc["identified_share"] == 1.0)))
        level = voc.get("level_db")
        rows.append(_row("vocoder_level", "vocoder output level against the real audio's (dB RMS)", level,
                         voc.get("griffinlim_level_db"), "Griffin-Lim", f"within +-{LEVEL_TOLERANCE_DB:g} dB",
                         None if level is None else bool(abs(level) <= LEVEL_TOLERANCE_DB),
                         voc.get("level_skipped", "")))
        rows.append(_row("vocoder_mel_l1",
                         "vocoder mel L1 (MelGAN)", voc["mel_l1"], voc["griffinlim_mel_l1"], "Griffin-Lim",
                         "reference", None))
    return rows


def format_targets(rows: Sequence[Mapping[str, Any]]) -> str:
    """The targets as a plain-text table: measure, value, baseline, target, met."""
    def fmt(v) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    table = [("measure", "value", "baseline", "target", "met")]
    for r in rows:
        base = fmt(r["baseline"]) + (f" ({r['baseline_is']})" if r["baseline"] is not None and r["baseline_is"]
                                     else "")
        met = "-" if r["met"] is None else "yes" if r["met"] else "NO"
        table.append((r["measure"], fmt(r["value"]), base, r["target"], met + (f"  {r['note']}" if r["note"] else "")))
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4] for row in table)
