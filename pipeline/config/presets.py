"""The one reader of the configs outside a stage: Hydra's compose, so presets inherit (`defaults:`) and their
interpolations resolve exactly as a stage sees them. Tests, benchmarks and the registry of released models
read presets through here, never with `OmegaConf.load`."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf

import pipeline.config  # noqa: F401  (registers the resolvers and the schemas)
from pipeline import CONF
from pipeline.config.check import check_config


def compose_stage(stage: str, overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """conf/<stage>.yaml composed with `overrides`, schemas checked (types, ranges, unknown keys: ConfigError), as
    `python -m stages.<stage>` would compose it (with its `hydra` node, run folder and choices included, when
    `return_hydra_config`). Inside a running stage (Hydra already initialised on conf/) it composes through that
    instance."""
    if GlobalHydra.instance().is_initialized():
        cfg = compose(stage, overrides=list(overrides), return_hydra_config=return_hydra_config)
    else:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(stage, overrides=list(overrides), return_hydra_config=return_hydra_config)
    check_config(cfg, stage)
    return cfg


def preset(group: str, name: str) -> DictConfig:
    """conf/<group>/<name>.yaml with what it inherits, its interpolations resolved against conf/base.yaml (the clip's
    sizes, paths)."""
    cfg = compose_stage("base", [f"+{group}={name}"])
    return cfg[group]


def preset_dict(group: str, name: str) -> dict[str, Any]:
    """`preset` as plain containers, every interpolation resolved."""
    return OmegaConf.to_container(preset(group, name), resolve=True)
