"""`python -m stages.make_demo_data`: the demo data set (`pipeline.demo_data`) from conf/make_demo_data.yaml."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.demo_data import DemoSpec, generate


def run(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The `make_demo_data` stage: build the spec from the config, generate, say where the data went."""
    if cfg["dataset"]["name"] != "demo":
        raise ValueError(f"make_demo_data writes the demo data set, but dataset={cfg['dataset']['name']}: "
                         f"drop the dataset override (the data goes to dataset=demo's root)")
    spec = DemoSpec(num_classes=int(cfg["num_classes"]), clips_per_class=int(cfg["clips_per_class"]),
                    valid_share=float(cfg["valid_share"]), seconds=float(cfg["seconds"]),
                    size=int(cfg["size"]), fps=int(cfg["fps"]), sample_rate=int(cfg["sample_rate"]),
                    background=float(cfg["background"]),
                    events_per_clip=tuple(int(n) for n in cfg["events_per_clip"]), seed=int(cfg["seed"]),
                    **{key: int(value) for key, value in cfg["grid"].items()})
    dataset = cfg["dataset"]
    result = generate(dataset["root"], spec, dataset["videos"], dataset["splits"]["train"],
                      dataset["splits"]["valid"], overwrite=bool(cfg["overwrite"]))
    print(f"[make_demo_data] {result['written']} clips written, {result['skipped']} kept (already there): "
          f"{spec.num_classes} classes x {spec.clips_per_class} clips of {spec.seconds:g} s\n"
          f"  videos: {Path(result['videos']).resolve()}\n"
          f"  splits: {Path(result['train']).resolve()}, {Path(result['valid']).resolve()}\n"
          f"  about:  {(Path(result['root']) / 'README.md').resolve()}", flush=True)
    return result
