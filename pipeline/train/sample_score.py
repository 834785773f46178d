"""The transformer's validation measure of what it is for: its samples of the validation clips, judged
(`transformer.monitor: samples`; best.pt is then the checkpoint whose samples score highest).

The validation loss says how well the GPT predicts the real tokens one at a time; whether a whole sampled clip has
its video's class and its events' timing is another matter, and on a few dozen clips the two part (the demo's seed 0
needed twice the steps that spoiled seed 1's timing). At each validation every validation clip (or the first
`transformer.monitor_clips`) is sampled `transformer.monitor_draws` times from scratch with the preset's sampling
settings, from the same seeds at every validation (so checkpoints are compared on the same draws; not the sample
stage's), decoded by the codebook, and judged:

- **class**: the share the classifier `classifier.ckpt` (the chain passes the one it trains; it may know more
  classes than the data set's, by name) puts in their clip's class. A judge without a trained classifier misled:
  the nearest class centroid of code histograms chose demo seed 1's step 400 (class match by the classifier 0.889,
  144 samples) over step 1600 (0.986);
- **synchrony**: the share of the clip's events (`dataset.events`, as the demo's events.json) with a sound onset
  of the sample within one codebook column (`pipeline.evaluate.events.synchrony`, the evaluation's own rule).

The score is the mean of those the run has (a classifier, events). The samples judged here are drawn from seeds
of their own, not the evaluation's samples; the clips are the evaluation split's, as best.pt by validation loss is.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

from pipeline.build.classifier import load_classifier, load_melception
from pipeline.data.datasets import ConditionedDataset, batch_condition
from pipeline.data.layout import Labels
from pipeline.evaluate.events import synchrony
from pipeline.evaluate.model_checks import clip_event_frames
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.settings import SamplingSettings
from pipeline.media.mel import unit_mel

BATCH = 64               # clips sampled and judged at once
SEED_OFFSET = 7_000_003  # a batch's draws: seed * this + its first sample's index (the sample stage's: 1_000_003)


def what_is_judged(dataset_cfg: Mapping[str, Any], classifier: str | None) -> list[str]:
    """The parts of the score this run has; raises when it has none or a named file is missing."""
    events = dataset_cfg.get("events")
    for key, path, what in (("dataset.events", events, "times the samples against each clip's events in it"),
                            ("classifier.ckpt", classifier, "judges the samples' class with it")):
        if path and not Path(str(path)).exists():
            raise FileNotFoundError(f"{key}={path} does not exist: transformer.monitor=samples {what}; train or pass "
                                    f"it, or set {key}=null")
    parts = (["class"] if classifier else []) + (["synchrony"] if events else [])
    if not parts:
        raise ValueError("transformer.monitor=samples judges samples by their class (it needs classifier.ckpt, a "
                         "classifier of the data set's classes) and their timing (it needs dataset.events, each clip's "
                         f"event onsets); data set {dataset_cfg['name']} has neither: pass one, or use "
                         "transformer.monitor=loss")
    return parts


def class_indices(classifier_classes: Sequence[str] | None, classes: Sequence[str], path: str) -> list[int]:
    """The classifier's index of each of the data set's classes (a classifier may know more classes); a classifier
    that names none (the original's) is taken to have the data set's, in order."""
    if classifier_classes is None:
        return list(range(len(classes)))
    known = list(classifier_classes)
    missing = [c for c in classes if c not in known]
    if missing:
        raise ValueError(f"classifier.ckpt={path} knows the classes {known}, not {missing} of this data set's "
                         f"{list(classes)}: pass a classifier trained on them (the chain's train_classifier step)")
    return [known.index(c) for c in classes]


def check_judge(cfg: Mapping[str, Any]) -> None:
    """What `transformer.monitor=samples` needs, checked before training (the stage's preflight): a judge, its files,
    a classifier that knows the data set's classes."""
    if "class" in what_is_judged(cfg.dataset, cfg.classifier.ckpt):
        class_indices(load_classifier(str(cfg.classifier.ckpt)).classes, Labels(cfg.dataset).classes,
                      str(cfg.classifier.ckpt))


class SampleScore:
    """Samples the validation clips and scores them (module docstring); made once per run, called per validation."""

    def __init__(self, model: torch.nn.Module, cfg: Mapping[str, Any], seed: int):
        """`cfg`: the train_transformer stage's (its dataset, features, data, classifier and transformer groups)."""
        tcfg, data = cfg.transformer, cfg.data
        self.model = model
        self.condition = str(tcfg.condition)
        settings = SamplingSettings.from_config(tcfg.sampling, vocab=int(model.first_stage_model.n_embed))
        self.settings = dataclasses.replace(settings, mode="nopix")  # from scratch, whatever the preset's mode
        self.sampler = TokenSampler.from_config(model, tcfg.sampling)
        self.seed = int(seed)
        valid = ConditionedDataset(cfg.dataset, cfg.features, str(data.val_split), int(tcfg.feat_sample_size),
                                   condition=self.condition, spec_len=int(data.spec_len), crop_len=int(data.crop_len))
        parts = what_is_judged(cfg.dataset, cfg.classifier.ckpt)
        clips = range(len(valid) if tcfg.monitor_clips is None else min(int(tcfg.monitor_clips), len(valid)))
        self.ids = [valid.ids[i] for i in clips]
        # the judged clips' conditions, read once (every validation samples the same ones, draw after draw)
        self.conditions = batch_condition(default_collate([valid[i] for i in clips]), self.condition,
                                          self.sampler.device)
        self.draws = int(tcfg.monitor_draws)
        self.events = None
        if "synchrony" in parts:
            events = clip_event_frames(cfg.dataset.events, cfg.dataset, self.ids)
            if isinstance(events, str):
                raise ValueError(f"transformer.monitor=samples: {events}")
            self.events = events
        self.classifier = None
        if "class" in parts:
            classifier, normalize, classes = load_melception(str(cfg.classifier.ckpt), None, self.sampler.device)
            wanted = class_indices(classes, valid.classes, str(cfg.classifier.ckpt))
            self.targets = np.asarray([wanted[valid.targets[i]] for i in clips])  # in the classifier's classes
            self.classifier, self.normalize = classifier, normalize

    @torch.no_grad()
    def __call__(self) -> dict[str, float]:
        """{"samples_score", "samples_class_match", "samples_synchrony"} (those the run has) of the model's current
        weights."""
        self.sampler.refresh()
        device = self.sampler.device
        clips = torch.arange(len(self.ids)).repeat(self.draws)  # the judged samples' clips, draw after draw
        mels, predicted = [], []
        for start in range(0, len(clips), BATCH):
            cond = self.conditions[clips[start:start + BATCH].to(device)]
            gen = torch.Generator(device).manual_seed(self.seed * SEED_OFFSET + start)
            tokens = self.sampler.sample(cond, self.settings, self.model.num_tokens, generator=gen)
            with self.sampler.autocast():
                mel = unit_mel(self.model.decode_to_spec(tokens)[:, 0].float())  # (B, 80, T) in [0, 1]-ish
            if self.classifier is not None:
                logits = self.classifier.features(self.normalize(mel, zero_one=True), ("logits",))["logits"]
                predicted.append(logits.argmax(1).cpu())
            if self.events is not None:
                mels.append(mel.cpu().numpy())
        out: dict[str, float] = {}
        if self.classifier is not None:
            out["samples_class_match"] = float(np.mean(torch.cat(predicted).numpy() == self.targets[clips.numpy()]))
        if self.events is not None:
            pairs = [(self.events[self.ids[c]], m) for c, m in zip(clips.tolist(), np.concatenate(mels))]
            rate = synchrony(pairs)["rate"]
            out["samples_synchrony"] = 0.0 if rate is None else float(rate)
        out["samples_score"] = float(np.mean(list(out.values())))
        return out
