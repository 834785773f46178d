"""`make demo`'s chain: `python -m stages.chain` on the folder of videos `stages.make_demo_data` generates, with its
events.json for the synchrony target. The Makefile runs exactly `demo_chain(...)`'s overrides (tests/test_chain.py
checks that they agree); other code runs the demo, or finds what it made, through here."""
from __future__ import annotations

import os
from collections.abc import Sequence

from pipeline.chain.chain import compose_chain
from pipeline.chain.graph import ChainSpec
from pipeline.config.presets import compose_stage


def demo_chain(root: str | os.PathLike, valid_share: float) -> list[str]:
    """The chain's overrides for the demo data set generated under `root` (dataset=demo's root) with
    make_demo_data's `valid_share` (the folder's hash split takes as many validation clips of each class)."""
    return ["dataset=folder", f"dataset.root={root}/videos", f"dataset.events={root}/events.json",
            f"dataset.shares.valid={valid_share:g}", "models=tiny"]


def demo_request(extra: Sequence[str] = ()) -> ChainSpec:
    """The demo's chain request (`extra`: more overrides, e.g. `seed=3` or `paths.outputs=DIR`, given to
    make_demo_data too), with its run folder: what `make demo` made lies there."""
    data = compose_stage("make_demo_data", [o for o in extra if o.startswith(("paths.", "seed="))])
    return compose_chain([*demo_chain(data.dataset.root, float(data.valid_share)), *extra])
