"""The chain's steps for a folder of videos: which stages, with which derived paths, in which order.

    index -> extract_mels, extract_features -> splits -> train_codebook, train_vocoder, train_classifier
          -> train_transformer -> sample, sample_shuffled -> evaluate (metrics.json, report.html)

(train_transformer waits for the classifier too when its best.pt is chosen by judged samples: transformer.monitor)

plus `download` first when a step uses a released model by name (models=paper: the VGGSound MelGAN and mel
statistics). What the folder gives (index, mels, features, splits) lies under `dataset.data`, shared by every chain
run on that folder; the models, samples and the report under the chain's run folder, one folder per step.
A model given as `<model>.ckpt=` (a file or a released name) is used instead of its training step.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.chain.graph import ChainSpec, Graph, Step, override_key, quoted, under
from pipeline.checkpoints.zoo import Zoo
from pipeline.config.presets import compose_stage
from pipeline.data.folder import list_files, listing_digest, read_index
from pipeline.data.layout import read_split
from pipeline.runs.folders import RESULT_FILE, checkpoint_path

# override prefixes and the steps they go to (beside the chain's derived arguments)
DATA_KEYS = ("dataset", "paths", "zoo")                  # every step: which data, where things are
RUN_KEYS = ("logger", "seed", "force_resume")            # every model step
CHAIN_ONLY = ("models", "action", "submit", "slurm", "transformer_checkpoint", "samples_per_clip",
              "sample_batch_size", "mel_chain", "num_workers", "hydra")
OWN = ("dataset", "dataset.root", "paths.outputs", "codebook.ckpt", "vocoder.ckpt", "classifier.ckpt",
       "transformer.monitor")  # derived


def passed(spec: ChainSpec, *prefixes: str) -> list[str]:
    """The chain's command-line overrides under `prefixes`, as given, minus what the chain derives or keeps."""
    return [o for o in spec.passed(prefixes) if override_key(o) not in OWN and not under(override_key(o), CHAIN_ONLY)]


def data_dir(spec: ChainSpec) -> Path:
    """What the folder gives (index, splits, mels, features), shared by every chain run on it."""
    return Path(spec.cfg["dataset"]["data"]).absolute()


def released(name: Any, zoo: Zoo) -> bool:
    """Whether a checkpoint value is a released model's name (`melgan`), not a path."""
    return isinstance(name, str) and name in zoo


def folder_graph(spec: ChainSpec) -> Graph:
    """The steps of one chain run."""
    cfg, run = spec.cfg, spec.run_dir
    dataset = spec.cfg["dataset"]
    zoo = Zoo.from_cfg(cfg)
    base = ["dataset=folder", quoted("dataset.root", Path(dataset["root"]).expanduser().absolute()),
            quoted("paths.outputs", Path(cfg["paths"]["outputs"]).absolute()), *passed(spec, *DATA_KEYS)]
    runs = Path(dataset["runs"]).absolute()
    features_name = cfg["features"]["name"]
    features = [f"features={spec.choices['features']}", *passed(spec, "features")]
    model = [*base, *passed(spec, *RUN_KEYS)]
    training = [*model, *passed(spec, "trainer")]

    def indexed() -> str:
        return read_index(dataset["clips"])["listing"]

    def listing() -> str:
        return listing_digest(list_files(Path(dataset["root"]).expanduser()))

    steps = [
        Step("index", "folder_dataset", lambda: [*base, "part=index"], runs / "index",
             done_files=lambda: [Path(dataset["clips"])], fingerprint=listing, resources="cpu",
             about="probe every video, make its clips and their splits (once)"),
        Step("extract_mels", "extract_mels",
             lambda: [*base, f"chain={cfg['mel_chain']}", "split=null", "fail_on_clip_errors=false",
                      f"num_workers={cfg['num_workers']}"],
             runs / "extract_mels", deps=("index",), fingerprint=indexed, resources="cpu",
             shards=int(cfg["slurm"]["shards"]), about="mels and 10-s waveforms of every clip"),
        Step("extract_features", "extract_features",
             lambda: [*base, *features, "split=null", "fail_on_clip_errors=false", f"num_workers={cfg['num_workers']}"],
             runs / "extract_features" / features_name, deps=("index",), fingerprint=indexed,
             shards=int(cfg["slurm"]["shards"]), about=f"{features_name} features of every clip"),
        Step("splits", "folder_dataset", lambda: [*base, *features, "part=splits"], runs / "splits",
             deps=("extract_mels", "extract_features"), fingerprint=indexed, resources="cpu",
             done_files=lambda: [Path(p) for p in dataset["splits"].values()] + [Path(dataset["skipped"])],
             about="split files of the usable clips; the skipped files with their reasons"),
    ]
    downloads = sorted({str(v) for v in (cfg["codebook"]["ckpt"], cfg["vocoder"]["ckpt"],
                                         cfg["classifier"]["ckpt"], cfg["codebook"]["loss"].get("lpaps_stats"))
                        if released(v, zoo)})
    model_deps = ("splits", "download") if downloads else ("splits",)
    if downloads:
        steps.append(Step("download", "download", lambda: [*base, f"what=[{','.join(downloads)}]"],
                          run / "download", resources="cpu",
                          done_files=lambda: [zoo.local_path(zoo.get(n)) for n in downloads],
                          about=f"the released {', '.join(downloads)}"))

    def trained(group: str) -> Path:
        """The checkpoint of a model: `<group>.ckpt` when given, else its training step's best.pt."""
        given = cfg[group]["ckpt"]
        return Path(str(given)) if given and not released(given, zoo) else checkpoint_path(run / f"train_{group}")

    def checkpoint(group: str) -> str:
        given = cfg[group]["ckpt"]
        return str(given) if given and released(given, zoo) else str(trained(group))

    for group, about in (("codebook", "the spectrogram codebook"), ("vocoder", "MelGAN"),
                         ("classifier", "Melception on your classes (class match, FID)")):
        if cfg[group]["ckpt"]:
            continue
        extra = []
        stats = cfg["codebook"]["loss"].get("lpaps_stats")
        if group == "codebook" and released(stats, zoo):
            extra = [quoted("codebook.loss.lpaps_stats", zoo.local_path(zoo.get(str(stats))))]
        steps.append(Step(f"train_{group}", f"train_{group}",
                          lambda group=group, extra=extra: [*training, f"{group}={spec.choices[group]}",
                                                            *passed(spec, group), *extra],
                          run / f"train_{group}", deps=model_deps, fingerprint=indexed,
                          done_files=lambda group=group: [run / f"train_{group}" / RESULT_FILE, trained(group)],
                          about=about))
    monitor = cfg["transformer"]["monitor"]  # the chain's (models=tiny: samples, which the classifier judges)
    models = ("codebook", "classifier") if monitor == "samples" else ("codebook",)
    ckpt_deps = tuple(f"train_{g}" for g in models if not cfg[g]["ckpt"])
    steps.append(Step("train_transformer", "train_transformer",
                      lambda: [*training, f"transformer={spec.choices['transformer']}", *passed(spec, "transformer"),
                               f"transformer.monitor={monitor}", *features,
                               *(quoted(f"{g}.ckpt", checkpoint(g)) for g in models)],
                      run / "train_transformer", deps=(*model_deps, *ckpt_deps), fingerprint=indexed,
                      done_files=lambda: [run / "train_transformer" / RESULT_FILE],
                      about="the GPT over the codebook's tokens, conditioned on the features"))
    transformer = checkpoint_path(run / "train_transformer", cfg["transformer_checkpoint"])
    split = str(dataset["eval_split"])

    def sampling(shuffled: bool) -> list[str]:
        args = [*model, *passed(spec, "sampling"), quoted("transformer.ckpt", transformer),
                f"samples_per_clip={samples_per_clip(cfg, dataset)}", f"batch_size={cfg['sample_batch_size']}",
                f"split={split}"]
        if shuffled:
            return [*args, "condition_shuffle=true", "write_wav=false"]
        return [*args, quoted("vocoder.ckpt", checkpoint("vocoder"))]

    vocoder_deps = ("train_vocoder",) if not cfg["vocoder"]["ckpt"] else ()
    samples = samples_dir(spec)
    steps += [
        Step("sample", "sample", lambda: sampling(False), run / "sample",
             deps=("train_transformer", *vocoder_deps), fingerprint=indexed,
             done_files=lambda: [samples / "sampling.json"], about=f"sounds for every {split} clip (npy + wav)"),
        Step("sample_shuffled", "sample", lambda: sampling(True), run / "sample_shuffled",
             deps=("train_transformer",), fingerprint=indexed,
             done_files=lambda: [run / "sample_shuffled" / "samples" / split / "sampling.json"],
             about="the baseline: each clip conditioned on another clip's video"),
    ]
    classifier_deps = ("train_classifier",) if not cfg["classifier"]["ckpt"] else ()
    steps.append(Step(
        "evaluate", "evaluate",
        lambda: [*model, quoted("samples_dir", samples), f"split={split}",
                 quoted("shuffled_samples_dir", run / "sample_shuffled" / "samples" / split),
                 quoted("classifier.ckpt", checkpoint("classifier")), quoted("codebook.ckpt", checkpoint("codebook")),
                 quoted("vocoder.ckpt", checkpoint("vocoder"))],
        run / "evaluate", deps=("sample", "sample_shuffled", *classifier_deps), fingerprint=indexed,
        done_files=lambda: [samples / "metrics.json", samples / "report.html"],
        about="metrics.json and report.html: each target beside its baseline"))
    return Graph(steps)


def samples_dir(spec: ChainSpec) -> Path:
    """Where the chain's samples of the evaluation split lie, with metrics.json and report.html beside them."""
    return spec.run_dir / "sample" / "samples" / str(spec.cfg["dataset"]["eval_split"])


@functools.lru_cache(maxsize=1)
def min_samples() -> int:
    """evaluate's `min_samples` (conf/evaluate.yaml): the samples the class-match target counts over."""
    return int(compose_stage("evaluate").min_samples)


def samples_per_clip(cfg: Mapping[str, Any], dataset: Mapping[str, Any]) -> int:
    """`samples_per_clip`, or enough samples of each evaluation clip for the class-match target to count
    (evaluate's `min_samples` over the clips of the evaluation split)."""
    if cfg.get("samples_per_clip"):
        return int(cfg["samples_per_clip"])
    wanted = min_samples()
    clips = read_split(dataset["splits"][dataset["eval_split"]])
    return max(1, math.ceil(wanted / max(len(clips), 1)))
