"""A misspelt key on the command line, pointed at the nearest valid one.

Hydra refuses an override of a key the config does not have (`trainer.max_step=3`: "Could not override ... use
+trainer.max_step=3"; the typed schemas, `pipeline.config.schemas`, refuse the `+` too). `run_stage(main,
config_name)` runs a
stage's `@hydra.main` function and, when it exits with an error, prints for each override of an unknown key the
nearest valid key (difflib) and how to list them all. It composes the config a second time only then.
"""
from __future__ import annotations

import difflib
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pipeline import CONF


def config_keys(tree: Any, prefix: str = "") -> list[str]:
    """Every dotted key of a nested mapping (inner nodes too)."""
    keys = []
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            keys.append(f"{prefix}{key}")
            keys.extend(config_keys(value, f"{prefix}{key}."))
    return keys


def nearest_key(key: str, keys: Iterable[str]) -> str | None:
    """The valid dotted key most like `key` (difflib), None when none is close."""
    match = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.6)
    return match[0] if match else None


def unknown_key_hints(config_name: str, overrides: Sequence[str]) -> list[str]:
    """A line for each `key=value` of `overrides` whose key is not in `conf/<config_name>.yaml` as composed with
    the overrides' group choices."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf


    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        if text.startswith("-"):
            continue
        try:
            parsed.append(parser.parse_override(text))
        except Exception:  # noqa: BLE001  (Hydra has already said what is wrong with it)
            continue
    choices = [o.input_line for o in parsed
               if "." not in o.key_or_group and not o.is_sweep_override() and not o.is_delete()]
    GlobalHydra.instance().clear()
    cfg = None
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for attempt in (choices, []):
            try:
                cfg = compose(config_name, overrides=list(attempt))
                break
            except Exception:  # noqa: BLE001  (a bad group choice: Hydra has named it)
                continue
    if cfg is None:
        return []
    keys = config_keys(OmegaConf.to_container(cfg, resolve=False))
    hints = []
    for override in parsed:
        key = override.key_or_group
        if key in keys or key.startswith("hydra") or "/" in key or override.package or (CONF / key).is_dir():
            continue  # a valid key, Hydra's own, or a config group's choice
        match = nearest_key(key, keys)
        hints.append(f"`{key}` is not a key of the {config_name} config"
                     + (f": did you mean `{match}`?" if match else "")
                     + f" (`python -m stages.{config_name} --cfg job` prints every key)")
    return hints


def run_stage(main: Callable[[], Any], config_name: str) -> None:
    """Run a stage's `@hydra.main` function; on an error exit, name the nearest valid key of each unknown one."""
    try:
        main()
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            for line in unknown_key_hints(config_name, sys.argv[1:]):
                print(line, file=sys.stderr)
        raise
