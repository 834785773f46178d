"""The train_transformer stage on a tiny generated data set: the loss falls, best/last and resume, a submitit
sweep, and the checks made before any work starts. Its helpers (tiny data set, codebook and transformer
checkpoints, a short video) are shared with tests/test_sample_stage.py."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from pipeline.io import save_npy, save_pickle, save_torch

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("chirp", "noise")
FEATURES = "efficientnet_lite0"   # dataset=demo's features; the files are made here, no network runs
FEAT_FOLDER = "feature_efficientnet_lite0_dim1280_21.5fps"
DEPTH = 1280
NO_ROLL = "transformer.roll_columns=false"


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


def make_codebook(path: Path) -> Path:
    """A tiny codebook (conf/codebook/tiny.yaml, random weights) saved as our checkpoint."""
    from pipeline.pretrained.codebook import build_codebook, codebook_checkpoint

    torch.manual_seed(0)
    model = build_codebook(OmegaConf.load(ROOT / "conf" / "codebook" / "tiny.yaml").model)
    save_torch(path, codebook_checkpoint(model))
    return path


def tiny_transformer_cfg(feat_sample_size: int = 5, depth: int = DEPTH, condition: str = "features"):
    from hydra import compose, initialize_config_dir

    import pipeline.config  # noqa: F401

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train_transformer", overrides=[
            "dataset=demo", "logger=none", f"transformer.feat_sample_size={feat_sample_size}",
            f"transformer.condition={condition}", "codebook.ckpt=unused"])
    cfg.transformer.feat_depth = depth
    if condition == "class":
        cfg.transformer.n_classes = len(CLASSES)
    return cfg


def make_transformer(path: Path, codebook: Path, features: dict, feat_sample_size: int = 5,
                     condition: str = "features") -> Path:
    """A tiny random transformer saved in our checkpoint format (what the training stage writes)."""
    from pipeline.pretrained import load_codebook
    from pipeline.pretrained.transformer import (
        build_transformer,
        model_args_from_config,
    )

    cfg = tiny_transformer_cfg(feat_sample_size, int(features["depth"]), condition)
    torch.manual_seed(0)
    vq = load_codebook(codebook)
    args = model_args_from_config(cfg.transformer)
    model = build_transformer(args, vq)
    save_torch(path, {"format": "specvqgan-pipeline", "kind": "transformer", "version": 1, "model_args": args,
                      "state_dict": model.state_dict(),
                      "codebook": {"model_args": vq.model_args, "source": str(codebook)},
                      "features": None if condition == "class" else dict(features),
                      "sampling": {"temperature": 1.0, "top_k": 16, "top_p": None, "mode": "nopix"}})
    return path


def write_video(path: Path, seconds: float, fps: int = 10, audio: bool = True, size: int = 32,
                picture: bool = True) -> Path:
    """A small mp4 (H.264, optional mono AAC at 22050 Hz) with moving grey levels; picture=False: sound only."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        if picture:
            video = out.add_stream("libx264", rate=Fraction(fps))
            video.width = video.height = size
            video.pix_fmt = "yuv420p"
        stream = out.add_stream("aac", rate=22050) if audio else None
        if stream is not None:
            stream.layout = "mono"
        for i in range(round(seconds * fps) if picture else 0):
            image = np.full((size, size, 3), (i * 8) % 256, np.uint8)
            out.mux(video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        if picture:
            out.mux(video.encode())
        if stream is not None:
            t = np.arange(int(seconds * 22050)) / 22050
            frame = av.AudioFrame.from_ndarray((0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None],
                                               format="flt", layout="mono")
            frame.sample_rate = 22050
            out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
    return path


# ------------------------------------------------------------------------------------------------- the tests
def _stage(outputs: Path, *args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    flags = [a for a in args if a.startswith("--")]  # Hydra's flags come before the overrides
    overrides = [a for a in args if not a.startswith("--")]
    # 1 or 5 condition frames cannot follow a shift by whole codebook columns: no rolling (it names the folder)
    result = subprocess.run([sys.executable, "-m", "stages.train_transformer", *flags, "dataset=demo", "logger=none",
                             "trainer=cpu", NO_ROLL, *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


@pytest.fixture
def demo(outputs: Path) -> Path:
    make_dataset(outputs / "demo_data")
    return make_codebook(outputs / "codebook.pt")


def _val_losses(log_text: str) -> list[float]:
    return [float(v) for v in re.findall(r"validation at step \d+: .*?val/loss=([0-9.]+)", log_text)]


def test_sweep_through_submitit_local_trains_and_a_rerun_resumes(demo, outputs):
    """One sweep (hydra/launcher=local: submitit pickles the job, as on SLURM) over two condition sizes."""
    _stage(outputs, "--multirun", "hydra/launcher=local", "transformer.feat_sample_size=1,5",
           f"codebook.ckpt={demo}", "trainer.max_steps=20", "trainer.val_every=5", "trainer.log_every=10")
    for S in (1, 5):
        # codebook.ckpt and trainer.* stay out of the folder name
        run = outputs / "train_transformer" / "demo" / f"transformer.feat_sample_size-{S}+{NO_ROLL.replace('=', '-')}"
        assert (run / "checkpoints" / "last.pt").exists() and (run / "checkpoints" / "best.pt").exists()
        losses = _val_losses((run / "train_transformer.log").read_text())
        assert len(losses) == 4 and losses[-1] < losses[0] - 0.3, losses  # from about ln(32) = 3.47

    ckpt = torch.load(run / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["kind"] == "transformer" and ckpt["model_args"]["block_size"] == 270
    assert ckpt["features"]["name"] == FEATURES and ckpt["features"]["depth"] == DEPTH
    keys = set(ckpt["state_dict"])
    assert {"first_stage_permuter.forward_shuffle_idx", "transformer.embedder.weight",
            "first_stage_model.quantize.embedding.weight"} <= keys
    assert not any(k.startswith("first_stage_model.loss.") for k in keys)
    from pipeline.pretrained import load_transformer

    model = load_transformer(run / "checkpoints" / "best.pt")  # self-contained: no codebook path needed
    assert model.transformer.embedder.weight.shape == (64, DEPTH, 1)

    # a plain run with the same overrides lands in the same folder and resumes there
    result = _stage(outputs, f"codebook.ckpt={demo}", "transformer.feat_sample_size=5", "trainer.max_steps=22")
    log_text = (run / "train_transformer.log").read_text()
    assert "resumed from" in log_text and "at step 20" in log_text
    assert "step 22" in result.stdout


def test_mismatches_are_reported_before_any_work(demo, tmp_path):
    from pipeline.pretrained.transformer import model_args_from_config
    from pipeline.tasks.transformer import preflight

    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt = str(demo)
    assert preflight(cfg, tmp_path).n_embed == 32
    save_torch(tmp_path / "checkpoints" / "last.pt", {"model_args": model_args_from_config(cfg.transformer)})
    other = tiny_transformer_cfg(1)
    other.codebook.ckpt = str(demo)
    with pytest.raises(ValueError, match=r"last.pt \(being resumed\).*feat_sample_size: 5.*1 in the config"):
        preflight(other, tmp_path)
    cfg.transformer.vocab_size = 64
    with pytest.raises(ValueError, match="has 32 codes but transformer.vocab_size is 64"):
        preflight(cfg, None)
    cfg.codebook.ckpt = str(tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="train the codebook first"):
        preflight(cfg, None)
    no_classes = tiny_transformer_cfg(5, condition="class")
    no_classes.codebook.ckpt, no_classes.transformer.n_classes = str(demo), None
    with pytest.raises(ValueError, match="needs transformer.n_classes"):
        preflight(no_classes, None)


def test_sampled_tokens_follow_the_condition(demo, outputs):
    """After a short in-process run, a clip's condition gives (greedy) tokens that agree with its own class's real
    tokens far more than with the other class's: the GPT reads its condition, not only the token statistics."""
    from pipeline.sampling import sample
    from pipeline.tasks.transformer import TransformerTask, batch_condition
    from pipeline.train import Trainer

    cfg = tiny_transformer_cfg(5)
    cfg.codebook.ckpt, cfg.transformer.roll_columns = str(demo), False
    task = TransformerTask(cfg, run_dir=outputs / "run")
    trainer = Trainer(task, {**cfg.trainer, "max_steps": 60, "val_every": 0, "log_every": 100,
                             "early_stop_patience": None}, outputs / "run", logger_cfg={"name": "none"}, seed=0,
                      batch_size=2)
    trainer.fit()
    model = trainer.unwrap("model").eval()
    val = task.val_dataset()  # one clip per class
    items = [val[i] for i in range(len(val))]
    x = torch.stack([torch.as_tensor(it["image"]) for it in items]).float().unsqueeze(1)
    cond = batch_condition({"feature": torch.stack([torch.as_tensor(it["feature"]) for it in items])}, "features")
    with torch.no_grad():
        real = model.encode_to_tokens(x)  # (2, 265)
        fake = sample(model, cond, num_tokens=model.num_tokens, greedy=True)
        swapped = sample(model, cond.flip(0), num_tokens=model.num_tokens, greedy=True)
    agree = (fake[:, None] == real[None]).float().mean(-1)  # (sampled for clip i, real tokens of clip j)
    print(f"token agreement (rows: condition of clip i, columns: real tokens of clip j): {agree.tolist()}")
    assert (real[0] != real[1]).float().mean() > 0.3  # the classes' token sequences differ
    assert (agree.diag() > agree.flip(1).diag() + 0.2).all(), agree  # measured: 0.69 vs 0.35, 0.71 vs 0.42
    torch.testing.assert_close(swapped, fake.flip(0), rtol=0, atol=0)  # the condition alone decides (greedy)


def test_rolled_columns_shift_mel_and_condition_together(demo, outputs):
    from pipeline.data import ConditionedDataset
    from pipeline.tasks.transformer import RolledColumns, TransformerTask

    cfg = tiny_transformer_cfg(53)
    cfg.codebook.ckpt = str(demo)
    task = TransformerTask(cfg, run_dir=outputs / "run")
    base = task._dataset("train", train=False)
    rolled = RolledColumns(base, columns=53)
    torch.manual_seed(3)
    item, plain = rolled[0], base[0]
    image, feature = np.asarray(item["image"]), np.asarray(item["feature"])
    shifts = [k for k in range(53) if np.array_equal(image, np.roll(plain["image"], 16 * k, axis=-1))]
    assert len(shifts) == 1 and shifts[0] != 0
    np.testing.assert_array_equal(feature, np.roll(plain["feature"], shifts[0], axis=0))
    assert item["target"] == plain["target"]
    with pytest.raises(ValueError, match="multiple of the 53 codebook columns"):
        RolledColumns(ConditionedDataset(cfg.dataset, cfg.features, "train", 5), columns=53)
