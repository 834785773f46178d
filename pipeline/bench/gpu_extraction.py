"""bench-gpu's extraction part: the extraction stages at data-set scale (a VGGSound-sized set is 200k clips).

`stages.extract_features features=resnet50` with the network on the device and videos decoded in `num_workers`
worker processes, and `stages.extract_mels chain=direct` in as many, each run through the stage's own `run(cfg)` on
generated 10-s clips (the demo data set's, copied to `clips` clips; random ResNet50 weights: the speed does not
depend on them). Figures, clips/s:
- steady state: the stage on `workers` clips (the workers' start: importing torch, loading the network) and then on
  `clips`; the difference of the two runs' times over the difference of their clips;
- the baseline: the stage in one process (`num_workers=0`), as the original extracted a clip after another, its
  steady rate likewise (one clip, then 1 + `baseline_clips`);
- the bound: the baseline's rate x the workers (perfect scaling; decoding is the CPUs' work).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.config.presets import compose_stage
from pipeline.demo.make_demo_data import run as make_demo_data
from pipeline.extract.extract_features import run as extract_features
from pipeline.extract.extract_mels import run as extract_mels

FULL = {"clips": 160, "baseline_clips": 8, "size": 256, "seconds": 10.0, "features": "resnet50", "steady": True}
SMOKE = {"clips": 2, "baseline_clips": 1, "workers": 1, "size": 64, "seconds": 2.0, "features": "resnet50_tiny",
         "steady": False, "stages": ("features",)}  # one pool, its start included: the code path, not a figure


def _data(root: Path, sizes: dict) -> list[Path]:
    """The demo data set under `root` (4 distinct clips), copied to `clips` videos; their paths."""
    make_demo_data(compose_stage("make_demo_data", [f"paths.outputs={root}", "num_classes=2", "clips_per_class=2",
                                                    f"size={sizes['size']}", f"seconds={sizes['seconds']}"]))
    videos = root / "demo_data" / "videos"
    made = sorted(videos.glob("*/*.mp4"))
    for i in range(len(made), sizes["clips"]):
        source = made[i % len(made)]
        shutil.copyfile(source, source.parent / f"copy_{i:05d}.mp4")
    return sorted(videos.glob("*/*.mp4"))


def _timed_run(stage: str, root: Path, tag: str, clips: int, workers: int, device: str, sizes: dict) -> float:
    """Seconds of the stage over the first `clips` videos (linked into a folder of their own, every video of which
    the stage extracts: `split=null`), outputs in a fresh folder."""
    folder = root / "runs" / tag / "videos"
    for video in sorted((root / "demo_data" / "videos").glob("*/*.mp4"))[:clips]:
        (folder / video.parent.name).mkdir(parents=True, exist_ok=True)
        os.link(video, folder / video.parent.name / video.name)
    common = [f"paths.outputs={root}", "dataset=demo", f"dataset.videos={folder}", "split=null",
              f"features_dir={root / 'runs' / tag / 'features'}", f"num_workers={workers}"]
    start = time.perf_counter()
    if stage == "features":
        extract_features(compose_stage("extract_features", [*common, f"features={sizes['features']}",
                                                            "features.weights=random", f"device={device}"]),
                         run_dir=root / "runs" / tag)
    else:
        extract_mels(compose_stage("extract_mels", [*common, "chain=direct"]), run_dir=root / "runs" / tag)
    return time.perf_counter() - start


def extraction(device: str, smoke: bool) -> dict[str, Any]:
    """Both stages' figures (module docstring); prints them."""
    sizes = dict(SMOKE if smoke else FULL)
    workers = sizes.get("workers") or min(16, os.cpu_count() or 1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _data(root, sizes)
        for stage in sizes.get("stages", ("features", "mels")):
            n, base_n = sizes["clips"], sizes["baseline_clips"]
            if sizes["steady"]:
                first = _timed_run(stage, root, f"{stage}_serial_start", 1, 0, device, sizes)
                baseline = base_n / (_timed_run(stage, root, f"{stage}_serial", 1 + base_n, 0, device, sizes) - first)
                start = _timed_run(stage, root, f"{stage}_start", workers, workers, device, sizes)
                rate = (n - workers) / (_timed_run(stage, root, f"{stage}_full", n, workers, device, sizes) - start)
            else:
                baseline = base_n / _timed_run(stage, root, f"{stage}_serial", base_n, 0, device, sizes)
                start = _timed_run(stage, root, f"{stage}_full", n, workers, device, sizes)
                rate = n / start
            out[stage] = {"clips_per_s": rate, "baseline_clips_per_s": baseline,
                          "bound_clips_per_s": baseline * workers, "workers": workers, "start_s": start, "clips": n}
            what = (f"{sizes['features']} features on {device}" if stage == "features" else "mels (chain=direct)")
            print(f"extraction, {what}, {workers} workers: {rate:.1f} clips/s {'steady' if sizes['steady'] else ''} "
                  f"({n} clips of {sizes['seconds']:g} s, {sizes['size']} px; {start:.1f} s for the first {workers} "
                  f"clips, the workers' start included) "
                  f"vs one process {baseline:.2f} clips/s ({rate / baseline:.1f}x); bound {workers} x one process "
                  f"= {baseline * workers:.1f} clips/s ({100 * rate / (baseline * workers):.0f}%); a 200k-clip set: "
                  f"{200_000 / rate / 3600:.1f} h")
    return out
