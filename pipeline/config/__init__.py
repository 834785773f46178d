"""OmegaConf resolvers and the config schemas shared by every stage.

Importing this module registers the resolvers and the schemas (`pipeline.config.schemas`), so every stage imports it
before `@hydra.main` composes.
"""
from __future__ import annotations

from omegaconf import OmegaConf

from pipeline.config.schemas import register as register_schemas
from pipeline.runs.folders import folder_label, run_checkpoint, run_name


def register_resolvers() -> None:
    resolvers = {
        "run_name": run_name,
        "run_checkpoint": run_checkpoint,
        "folder_label": folder_label,
        "sum": lambda *xs: sum(xs),
        "floordiv": lambda a, b: a // b,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
register_schemas()
