"""Visual features: key layouts (torchvision ResNet50, TSN BN-Inception), TV-L1 flow mapping, the original's
tiling and row counts on the real VAS clips, and the extract_features stage (resume, markers, failures)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.extract.visual import (
    RANDOM_MARKER,
    Preprocessing,
    extract_clip_features,
    extract_streams,
    load_model,
    load_strict,
    streams_to_condition,
    tile_to,
)
from pipeline.files.safe_pickle import load_pickle_array
from pipeline.media.flow import consecutive_flows, flow_to_uint8
from pipeline.media.video import frame_times, sample_indices
from tests.helpers import compose

CLIPS = ["baby/video_01951", "cough/video_00331", "dog/video_02677", "dog/video_02754", "drum/video_02480",
         "drum/video_02542", "fireworks/video_02997", "fireworks/video_03051", "gun/video_00819",
         "hammer/video_00323"]


def _bn(name: str, counter: bool = True) -> list[str]:
    return [f"{name}.{s}" for s in ("weight", "bias", "running_mean", "running_var")] + \
        ([f"{name}.num_batches_tracked"] if counter else [])


def torchvision_resnet50_keys() -> list[str]:
    """torchvision's resnet50().state_dict() keys, written from its documented module names."""
    keys = ["conv1.weight", *_bn("bn1")]
    for i, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            p = f"layer{i}.{b}"
            for c in (1, 2, 3):
                keys += [f"{p}.conv{c}.weight", *_bn(f"{p}.bn{c}")]
            if b == 0:
                keys += [f"{p}.downsample.0.weight", *_bn(f"{p}.downsample.1")]
    return keys + ["fc.weight", "fc.bias"]


def tsn_bninception_convs() -> list[str]:
    """TSN's BN-Inception layer names (bn_inception.yaml): a stem and ten inception blocks."""
    convs = ["conv1_7x7_s2", "conv2_3x3_reduce", "conv2_3x3"]
    for block in ("3a", "3b", "3c", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        branches = ["3x3_reduce", "3x3", "double_3x3_reduce", "double_3x3_1", "double_3x3_2"]
        if block not in ("3c", "4e"):  # the stride-2 blocks have no 1x1 branch and no pool projection
            branches = ["1x1", *branches, "pool_proj"]
        convs += [f"inception_{block}_{b}" for b in branches]
    return convs


# ------------------------------------------------------------------------------------ layouts, weights

def test_resnet50_has_torchvision_key_layout_and_loads_strictly(tmp_path):
    model = load_model("resnet50", "random")
    state = model.state_dict()
    assert list(state) == torchvision_resnet50_keys() and len(state) == 320
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's ResNet50
    assert state["layer4.2.conv3.weight"].shape == (2048, 512, 1, 1) and state["fc.weight"].shape == (1000, 2048)
    file = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in state.items()}
    torch.save(file, tmp_path / "resnet50.pth")
    loaded = load_model("resnet50", str(tmp_path / "resnet50.pth"))
    assert torch.equal(loaded.state_dict()["layer3.5.bn2.running_var"], file["layer3.5.bn2.running_var"])
    del file["layer1.0.downsample.1.weight"]
    with pytest.raises(ValueError, match=r"layer1\.0\.downsample\.1\.weight.*download\.pytorch\.org"):
        load_strict(model, file, "broken.pth", "resnet50")
    with pytest.raises(FileNotFoundError, match="Nothing is downloaded"):
        load_model("resnet50", str(tmp_path / "missing.pth"))
    with torch.inference_mode():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2048)


def test_bninception_loads_a_tsn_file_and_builds_the_flow_net_from_rgb(tmp_path):
    model = load_model("bninception", "random")
    convs = tsn_bninception_convs()
    assert len(convs) == 69
    expected = [k for c in convs for k in (f"{c}.weight", f"{c}.bias", *_bn(f"{c}_bn"))]
    assert sorted(model.rgb.state_dict()) == sorted(expected)
    shapes = {k: tuple(v.shape) for k, v in model.rgb.state_dict().items()}
    assert shapes["conv1_7x7_s2.weight"] == (64, 3, 7, 7)
    assert shapes["inception_3a_pool_proj.weight"] == (32, 192, 1, 1)
    assert shapes["inception_4e_double_3x3_2.weight"] == (256, 256, 3, 3)
    assert shapes["inception_5a_1x1.weight"] == (352, 1056, 1, 1)
    assert shapes["inception_5b_pool_proj.weight"] == (128, 1024, 1, 1)
    # the released file: a 2017 state dict (no BatchNorm counters) with the ImageNet fc
    file = {k: torch.randn(v) for k, v in shapes.items() if not k.endswith("num_batches_tracked")}
    file["fc.weight"], file["fc.bias"] = torch.randn(1000, 1024), torch.randn(1000)
    torch.save(file, tmp_path / "bn_inception-9f5701afb96c8044.pth")
    loaded = load_model("bninception", str(tmp_path / "bn_inception-9f5701afb96c8044.pth"))
    assert torch.equal(loaded.rgb.inception_4c_3x3.weight, file["inception_4c_3x3.weight"])
    w = file["conv1_7x7_s2.weight"].mean(dim=1, keepdim=True)
    assert torch.allclose(loaded.flow.conv1_7x7_s2.weight, w.expand(-1, 2, -1, -1))
    assert torch.equal(loaded.flow.conv1_7x7_s2.bias, file["conv1_7x7_s2.bias"])
    assert torch.equal(loaded.flow.inception_5b_3x3.weight, file["inception_5b_3x3.weight"])
    with torch.inference_mode():
        assert loaded.rgb(torch.zeros(1, 3, 64, 64)).shape == (1, 1024)
        assert loaded.flow(torch.zeros(1, 2, 64, 64)).shape == (1, 1024)
    del file["inception_3c_3x3_bn.running_mean"]
    with pytest.raises(ValueError, match="inception_3c_3x3_bn.running_mean.*bn_inception-9f5701afb96c8044"):
        load_strict(model.rgb, file, "broken.pth", "bninception")
    with pytest.raises(FileNotFoundError, match="bn_inception-9f5701afb96c8044.pth"):
        load_model("bninception", str(tmp_path / "nope.pth"))


def test_efficientnet_packaged_weights_load_strictly():
    model = load_model("efficientnet_lite0", "packaged")
    with torch.inference_mode():
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 1280)
    with pytest.raises(ValueError, match="only for efficientnet_lite0"):
        load_model("resnet50", "packaged")


def test_config_presets_hold_the_original_preprocessing():
    for kind in ("resnet50", "bninception", "efficientnet_lite0"):
        cfg = compose("extract_features", f"features={kind}")
        assert Preprocessing.from_cfg(cfg.features) == Preprocessing.for_kind(kind)
    tiny = compose("extract_features", "features=bninception_tiny").features
    assert tiny.preprocessing.loop_to == 10.0 and tiny.weights == "random"


# ------------------------------------------------------------------------------------------ flow

def test_flow_mapping_is_regnets_linear_map():
    values = np.array([-100, -20, -10, 0, 10, 20, 100], np.float32)
    flow = np.stack([values, -values], axis=-1)[None]  # (1, 7, 2)
    mapped = flow_to_uint8(flow)
    np.testing.assert_array_equal(mapped[0, :, 0], [0, 0, 64, 128, 191, 255, 255])
    np.testing.assert_array_equal(mapped[0, :, 1], [255, 255, 191, 128, 64, 0, 0])


def test_tvl1_on_a_moving_square():
    import cv2

    rng = np.random.default_rng(0)
    texture = (rng.random((20, 20)) * 255).astype(np.uint8)
    background = cv2.GaussianBlur((rng.random((64, 64)) * 255).astype(np.uint8), (5, 5), 1.5)  # static
    frames = []
    for dx, dy in ((0, 0), (3, 2)):
        frame = background.copy()
        frame[20 + dy:40 + dy, 20 + dx:40 + dx] = texture
        frames.append(frame)
    (flow,) = consecutive_flows(frames)
    assert flow.shape == (64, 64, 2) and flow.dtype == np.uint8
    inside = flow[25:35, 25:35].reshape(-1, 2)
    x, y = np.median(inside, axis=0)
    assert abs(x - (3 + 20) * 255 / 40) <= 4 and abs(y - (2 + 20) * 255 / 40) <= 4  # ~147, ~140
    assert np.all(np.abs(flow[:6, :6].astype(int) - 128) <= 2)  # the still background maps to 128


# ------------------------------------------------------------------------ real clips vs the original

@pytest.mark.parametrize("clip", CLIPS)
def test_resnet50_tiling_matches_the_shipped_pickles(vas_dir, clip):
    """The original's ResNet50 pickles are 215 rows tiled with the clip's frame count as period."""
    label, name = clip.split("/")
    shipped = load_pickle_array(vas_dir / "features" / label / "feature_resnet50_dim2048_21.5fps" / f"{name}.pkl")
    assert shipped.shape == (215, 2048) and shipped.dtype == np.float32
    frames = len(sample_indices(frame_times(vas_dir / "videos" / f"{clip}.mp4")))
    if frames < 215:
        np.testing.assert_array_equal(shipped[frames:], shipped[:215 - frames])
        assert not np.array_equal(shipped[frames - 1], shipped[frames])
    else:
        assert frames in (215, 216)
    ours = tile_to(np.arange(frames, dtype=np.float32)[:, None], 215)
    assert ours.shape == (215, 1) and ours[-1, 0] == 214 % frames


# -------------------------------------------------------------------------------------------- stage

def _dataset(tmp_path: Path, vas_dir: Path, clips: list[str], corrupt: str | None = None) -> Path:
    data = tmp_path / "data"
    for clip in clips:
        link = data / "vas" / "videos" / f"{clip}.mp4"
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(vas_dir / "videos" / f"{clip}.mp4", link)
    if corrupt:
        bad = data / "vas" / "videos" / f"{corrupt}.mp4"
        bad.parent.mkdir(parents=True, exist_ok=True)
        bad.write_bytes(b"not a video at all" * 100)
    return data


def _run_stage(tmp_path: Path, data: Path, features: str, *extra: str) -> Path:
    from pipeline.extract.extract_features import run

    cfg = compose("extract_features", f"features={features}", "dataset=vas", f"paths.data={data}",
                  f"features_dir={tmp_path / 'feats'}", "logger=none", "device=cpu", *extra)
    run(cfg, run_dir=tmp_path / "run")
    return tmp_path / "feats"


def test_stage_resnet50_real_clip_resume_and_failures(tmp_path, vas_dir):
    data = _dataset(tmp_path, vas_dir, ["dog/video_02677"], corrupt="cough/video_99999")
    small = ["features.preprocessing.short_side=72", "features.preprocessing.crop=64"]  # fast; same code path
    with pytest.raises(SystemExit, match=r"1 written, 0 skipped \(already there\), 1 failed \(1 corrupt\)"):
        _run_stage(tmp_path, data, "resnet50_tiny", *small)  # a clip failed: non-zero, with the summary
    feats = tmp_path / "feats"
    folder = feats / "dog" / "feature_resnet50_tiny_dim256_21.5fps"
    x = load_pickle_array(folder / "video_02677.pkl")  # a plain array, through the safe loader
    assert type(x) is np.ndarray and x.shape == (215, 256) and x.dtype == np.float32
    np.testing.assert_array_equal(x[129:], x[:86])  # period 129, as the shipped pickle of this clip
    assert (folder / RANDOM_MARKER).exists()
    failures = [json.loads(line) for line in (tmp_path / "run" / "failures.jsonl").read_text().splitlines()]
    assert [f["item"] for f in failures] == ["cough/video_99999"] and "video_99999.mp4" in failures[0]["reason"]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["processed"], summary["failed"], summary["weights"]) == (1, 1, "random")
    mtime = (folder / "video_02677.pkl").stat().st_mtime_ns
    with pytest.raises(SystemExit, match=r"0 written, 1 skipped \(already there\), 1 failed"):
        _run_stage(tmp_path, data, "resnet50_tiny", *small)  # resumes: the finished clip is skipped
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["processed"], summary["skipped"]) == (0, 1)
    assert (folder / "video_02677.pkl").stat().st_mtime_ns == mtime


def test_stage_bninception_rows_and_streams(tmp_path, vas_dir, monkeypatch):
    """216 rows per stream as the shipped pickles; TV-L1 is replaced by a fast stand-in (tested above)."""
    import pipeline.media.flow

    class StillFlow:
        def calc(self, prev, curr, _):
            return np.zeros((*prev.shape, 2), np.float32)

    monkeypatch.setattr(pipeline.media.flow, "tvl1", StillFlow)
    data = _dataset(tmp_path, vas_dir, ["dog/video_02677"])
    feats = _run_stage(tmp_path, data, "bninception_tiny", "features.preprocessing.input_size=64")
    shipped = load_pickle_array(vas_dir / "features/dog/feature_rgb_bninception_dim1024_21.5fps/video_02677.pkl")
    for stream in ("rgb", "flow"):
        folder = feats / "dog" / f"feature_{stream}_bninception_tiny_dim128_21.5fps"
        x = load_pickle_array(folder / "video_02677.pkl")
        assert x.shape == (216, 128) and x.shape[0] == shipped.shape[0]
        assert (folder / RANDOM_MARKER).exists()
    rgb = load_pickle_array(feats / "dog/feature_rgb_bninception_tiny_dim128_21.5fps/video_02677.pkl")
    np.testing.assert_allclose(rgb[129:215], rgb[:86], atol=1e-4)  # looped at the video level: period 129


def test_extract_clip_features_gives_the_condition(vas_dir):
    model = load_model("resnet50", "random", width=4)
    video = vas_dir / "videos/dog/video_02677.mp4"
    prep = Preprocessing.for_kind("resnet50", short_side=72, crop=64)  # small frames: fast
    cond = extract_clip_features(video, "resnet50", model, prep)
    assert cond.shape == (215, 128)
    np.testing.assert_array_equal(cond[129:], cond[:86])  # 6.006 s clip: period 129
    streams = extract_streams(video, "resnet50", model, prep)
    np.testing.assert_array_equal(streams_to_condition([streams["rgb"]], 215), cond)
