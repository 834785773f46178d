"""What several test modules make: a composed config, small videos, a tiny demo-layout data set, and tiny codebook,
transformer and Melception models saved through the project's own checkpoint writer. Test modules import from here,
never from each other; `tests/conftest.py` hands `compose` out as a fixture too."""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from pipeline.config.presets import compose_stage, preset
from pipeline.demo.make_demo_data import DemoSpec
from pipeline.files.writes import save_npy, save_pickle

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SHARED = Path(os.environ.get("SPECVQGAN_SHARED", ROOT.parent / "shared")).resolve()  # ../shared: reference data
SR = 22050                        # the clips' audio rate (the pipeline's)
CLASSES = ("chirp", "noise")      # make_dataset's two classes
FEATURES = "efficientnet_lite0"   # dataset=demo's features; the files are made here, no network runs
FEAT_FOLDER = "feature_efficientnet_lite0_dim1280_21.5fps"
DEPTH = 1280
# the chain (stages.chain) on the tiny presets with a few steps each: its steps, not the models' quality, under test
CHAIN_FEW_STEPS = ["logger=none", "codebook.schedule.max_steps=4", "codebook.schedule.val_every=2",
                   "vocoder.schedule.max_steps=2", "vocoder.schedule.val_every=2", "vocoder.optim.batch_size=2",
                   "classifier.schedule.max_steps=2", "classifier.schedule.val_every=2",
                   "classifier.optim.batch_size=2", "transformer.schedule.max_steps=4",
                   "transformer.schedule.val_every=2", "samples_per_clip=2"]
SMALL_VGG = {"conv_layers": (4, "MP", 8, 8, "MP", 8), "num_classes": 7, "hidden": 16}  # a VGGishish in a few ms


@contextmanager
def hydra_conf():
    """Hydra initialised on conf/ (resolvers and schemas registered), for code that composes configs itself."""
    from hydra import initialize_config_dir

    import pipeline.config  # noqa: F401  (registers the resolvers and the schemas)

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield


def compose(config_name: str, *overrides: str) -> DictConfig:
    """The stage config `conf/<config_name>.yaml` with `overrides`, as `python -m stages.<stage>` composes it."""
    from hydra import compose as hydra_compose

    with hydra_conf():
        return hydra_compose(config_name, overrides=list(overrides))


def features_preset(name: str) -> dict[str, Any]:
    """conf/features/<name>.yaml merged over its defaults, its sizes from the clip node, as plain containers."""
    from pipeline.checkpoints.zoo import features_preset as preset

    return preset(name)


def write_clip(path: Path, seconds: float, audio: str | None = "sine", fps: int = 10, size: int = 32,
               picture: bool = True) -> Path:
    """A small mp4: `size`-pixel H.264 frames of moving grey levels (none when picture=False) and mono AAC at
    22050 Hz. audio: 'sine' (440 Hz, 0.3), 'chirp' (a pulsed rising chirp, 0.5), 'silent' or None (no stream)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        if picture:
            video = out.add_stream("libx264", rate=Fraction(fps))
            video.width = video.height = size
            video.pix_fmt = "yuv420p"
        stream = out.add_stream("aac", rate=SR) if audio else None
        if stream is not None:
            stream.layout = "mono"
        for i in range(round(seconds * fps) if picture else 0):
            image = np.full((size, size, 3), (i * 8) % 256, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if picture:
            out.mux(video.encode())
        if stream is not None:
            t = np.arange(int(seconds * SR)) / SR
            wave = {"sine": lambda: 0.3 * np.sin(2 * np.pi * 440 * t),
                    "chirp": lambda: 0.5 * np.sin(2 * np.pi * (300 + 400 * t) * t) * (np.sin(2 * np.pi * 3 * t) > 0),
                    "silent": lambda: np.zeros_like(t)}[audio]()
            frame = av.AudioFrame.from_ndarray(wave.astype(np.float32)[None], format="flt", layout="mono")
            frame.sample_rate = SR
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return path


def faststart_truncated(path: Path, seconds: float = 10.0, keep: float = 0.49) -> Path:
    """An mp4 whose header (moov first) declares `seconds` but whose data stops after `keep` of the file."""
    import av

    plain = write_clip(path.with_name("plain_" + path.name), seconds, audio="chirp")
    with av.open(str(plain)) as src, av.open(str(path), "w", options={"movflags": "faststart"}) as out:
        streams = {s.index: out.add_stream_from_template(s) for s in src.streams}
        for packet in src.demux():
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)
    plain.unlink()
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


def bursts(onsets_s, seconds: float = 9.85, seed: int = 0, hiss: float = 1e-3) -> np.ndarray:
    """Faint hiss with a 0.25-s decaying 1 kHz tone (peak 0.5) starting at each onset."""
    rng = np.random.default_rng(seed)
    wave = hiss * rng.standard_normal(int(seconds * SR))
    t = np.arange(int(0.25 * SR)) / SR
    tone = 0.5 * np.sin(2 * np.pi * 1000 * t) * np.exp(-t / 0.08)
    for onset in onsets_s:
        start = int(onset * SR)
        wave[start:start + tone.size] += tone[: wave.size - start]
    return wave.astype(np.float32)


def make_dataset(root: Path, train: int = 3, valid: int = 1, seed: int = 0) -> Path:
    """`<root>` in the demo (VAS) layout with mels (80, 860) and features (215, 1280) per clip.

    Each class has its own mel pattern (a band sweeping in time) and its own feature mean, so a GPT learns fast.
    """
    rng = np.random.default_rng(seed)
    rows = {"train": [], "valid": []}
    for c, label in enumerate(CLASSES):
        for k in range(train + valid):
            clip = f"video_{k:05d}"
            mel = np.full((80, 860), 0.1, np.float32)
            t = np.arange(860)
            band = (20 + 30 * c + 10 * np.sin(2 * np.pi * t / (200 + 100 * c))).astype(int)
            for dt in range(6):
                mel[np.clip(band + dt, 0, 79), t] = 0.9
            mel += 0.02 * rng.standard_normal(mel.shape).astype(np.float32)
            save_npy(root / "features" / label / "melspec_10s_22050hz" / f"{clip}_mel.npy", mel)
            feats = (c + 0.1 * rng.standard_normal((215, DEPTH))).astype(np.float32)
            save_pickle(root / "features" / label / FEAT_FOLDER / f"{clip}.pkl", feats)
            rows["train" if k < train else "valid"].append(f"{label}/{clip}")
    for split, ids in rows.items():
        (root / f"demo_{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return root


def make_classifier(path: Path, classes=CLASSES) -> Path:
    """A narrow random Melception of `classes`, saved as our checkpoint (a class judge for tests of the wiring)."""
    from models.melception import Melception
    from pipeline.checkpoints.format import save_checkpoint

    torch.manual_seed(0)
    args = {"arch": "melception", "num_classes": len(classes), "aux_logits": False, "width": 0.0625}
    model = Melception(**{k: v for k, v in args.items() if k != "arch"}).eval()
    save_checkpoint(path, {"kind": "classifier", "model_args": args, "state_dict": model.state_dict(),
                           "classes": list(classes),
                           "normalization": {"mean": torch.full((80,), 0.5), "std": torch.full((80,), 0.2)}})
    return path


def make_codebook(path: Path) -> Path:
    """A tiny codebook (conf/codebook/tiny.yaml, random weights) saved as our checkpoint."""
    from pipeline.build.codebook import build_codebook, codebook_checkpoint
    from pipeline.files.writes import save_torch

    torch.manual_seed(0)
    model = build_codebook(preset("codebook", "tiny").model)
    save_torch(path, codebook_checkpoint(model))
    return path


def built_transformer(transformer_cfg: DictConfig, crop_len: int):
    """The wrapper a `transformer` config gets over a tiny codebook (conf/codebook/tiny.yaml: the paper's 4
    downsamplings) for crop_len-frame clips, built as the training stage builds it, on the meta device (no weights):
    its grid (first_stage_permuter.H, .W) and block_size (.transformer.block_size) are the derived ones."""
    from pipeline.build.codebook import build_codebook
    from pipeline.build.transformer import build_transformer, codebook_grid, model_args_from_config

    with torch.device("meta"):
        codebook = build_codebook(preset("codebook", "tiny").model)
    args = model_args_from_config(transformer_cfg, codebook.n_embed, codebook_grid(codebook, crop_len))
    return build_transformer(args, codebook, device="meta")


def tiny_transformer_cfg(feat_sample_size: int = 5, depth: int = DEPTH, condition: str = "features") -> DictConfig:
    """The train_transformer config of dataset=demo (the tiny preset) for `feat_sample_size` frames of `depth`."""
    cfg = compose("train_transformer", "dataset=demo", "logger=none", "codebook.ckpt=unused",
                  f"transformer.feat_sample_size={feat_sample_size}", f"transformer.condition={condition}")
    cfg.transformer.feat_depth = depth
    if condition == "class":
        cfg.transformer.n_classes = len(CLASSES)
    if condition != "features":
        cfg.transformer.init = "original"  # the time-aligned start aligns tokens with visual frames only
    return cfg


def make_transformer(path: Path, codebook: Path, features: dict, feat_sample_size: int = 5,
                     condition: str = "features") -> Path:
    """A tiny random transformer over `codebook`, saved in the training stage's checkpoint layout."""
    from pipeline.build.codebook import load_codebook
    from pipeline.build.transformer import build_transformer, model_args_from_stage
    from pipeline.checkpoints.format import save_checkpoint

    cfg = tiny_transformer_cfg(feat_sample_size, int(features["depth"]), condition)
    torch.manual_seed(0)
    vq = load_codebook(codebook)
    args = model_args_from_stage(cfg, vq)
    model = build_transformer(args, vq)
    save_checkpoint(path, {"kind": "transformer", "version": 1, "model_args": args, "state_dict": model.state_dict(),
                           "codebook": {"model_args": vq.model_args, "source": str(codebook)},
                           "features": None if condition == "class" else dict(features),
                           "sampling": {"temperature": 1.0, "top_k": 16, "top_p": None, "mode": "nopix"}})
    return path


def fast_melception(num_classes: int):
    """A Melception with random weights, without the slow truncated-normal init of 25 M parameters."""
    from models.melception import Melception

    with torch.device("meta"):
        model = Melception(num_classes=num_classes, init_weights=False)
    model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.fill_(1.0)
            elif name.endswith("num_batches_tracked"):
                tensor.zero_()
            else:
                tensor.normal_(0.0, 0.05, generator=generator)
    return model


def demo_spec(**overrides) -> DemoSpec:
    """The demo data set's spec as conf/make_demo_data.yaml composes it, with `overrides` (smaller sets for tests)."""
    return DemoSpec.from_config(compose_stage("make_demo_data"), **overrides)


def video_folder(root: Path, classes: int = 2, clips: int = 4, seconds: float = 3.0, bad: bool = True) -> Path:
    """A folder of the demo's videos (pipeline.demo.make_demo_data: `classes` x `clips` of `seconds`, 64 px) in class
    subfolders whose names, like their files', have spaces; with `bad`, a truncated copy of a clip and a video
    without sound beside them."""
    import shutil

    from pipeline.demo.make_demo_data import class_list, generate

    made = root.parent / f".{root.name}-generated"
    generate(made, demo_spec(num_classes=classes, clips_per_class=clips, seconds=seconds, size=64, seed=0))
    for c in class_list(classes):
        folder = root / c.name.split("_", 1)[1].replace("_", " ")  # 00_chirp_circle -> "chirp circle"
        folder.mkdir(parents=True, exist_ok=True)
        for k, video in enumerate(sorted((made / "videos" / c.name).glob("*.mp4"))):
            shutil.copyfile(video, folder / f"clip {k}.mp4")
    shutil.rmtree(made)
    if bad:
        first = sorted(root.glob("*/clip 0.mp4"))[0]
        data = first.read_bytes()
        (first.parent / "broken clip.mp4").write_bytes(data[: len(data) // 2])
        write_clip(first.parent / "no sound.mp4", seconds, audio=None)
    return root


def in_two_processes(function: str, *args: str, timeout: int = 300) -> None:
    """Run `module:function(*args)` in two processes (accelerate.debug_launcher) from a fresh interpreter: forking a
    pytest worker that already holds threads (execnet's, a test server's) can leave a child stuck, and a stuck rank
    then waits out the process group's 30-minute timeout. Here a stuck pair fails after `timeout` seconds."""
    module, name = function.split(":")
    code = ("import sys; from accelerate import debug_launcher; "
            f"from {module} import {name}; debug_launcher({name}, args=tuple(sys.argv[1:]), num_processes=2)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        raise AssertionError(f"{function} in two processes did not finish in {timeout} s:\n"
                             f"{(err.stderr or b'')[-3000:]!r}") from None
    assert result.returncode == 0, f"{function} in two processes failed:\n{result.stderr[-5000:]}"
