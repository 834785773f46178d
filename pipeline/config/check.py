"""Every key of a stage's config checked before any work: its type, its range, and whether it exists at all.

- `config_problems(cfg, stage)` walks the composed config against the stage's schema (`pipeline.config.schemas`
  STAGE_SCHEMAS, top-level keys included): a key the schema does not know (also one added with `+`:
  `+trainer.learning_rat=1`), a value of another type (`samples_per_clip=two`) or out of its range
  (`trainer.max_steps=-1`), each named with its value and what is allowed.
- `StageChecks`, a Hydra callback (conf/base.yaml `hydra.callbacks.checks`), runs it when the command line has been
  composed, before the run folder is made, then the stage's own check of its inputs (files, checkpoints, released
  names: `inputs`, set in the stage's YAML), so a missing file is reported before any model loads; a problem
  ends the stage with exit status 2 and plain lines, no traceback.
- `run_stage(main, config_name)` runs a stage's `@hydra.main` function; a misspelt key on the command line
  (`trainer.max_step=3`) is answered with the nearest valid key (difflib) before Hydra composes, in place of
  Hydra's advice to add it with `+` (wrong for a key no schema has; right, and left to Hydra, under an open
  mapping such as `zoo.mirrors`).
"""
from __future__ import annotations

import dataclasses
import difflib
import sys
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, ListConfig, OmegaConf

from pipeline import CONF
from pipeline.config.schemas import STAGE_SCHEMAS, Range

USAGE_ERROR = 2  # the exit status of a stage refused before any work (a config value or an input)


class ConfigError(ValueError):
    """A stage's config has keys or values its schema refuses; the message lists each one."""


# ------------------------------------------------------------------------------------------------ the schema walk
def _optional(annotation: Any) -> tuple[Any, bool]:
    """(the type inside Optional[...], whether None is allowed)."""
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else Any), True
    return annotation, False


def _matches(value: Any, annotation: Any) -> bool:
    inner, nullable = _optional(annotation)
    if value is None:
        return nullable or inner is Any
    if inner is Any:
        return True
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        (element,) = typing.get_args(inner)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, element) for v in value)
    if origin is dict or dataclasses.is_dataclass(inner):
        return isinstance(value, Mapping)
    if inner is bool:
        return isinstance(value, bool)
    if inner is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if inner is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if inner is str:
        return isinstance(value, str)
    return True


def _kind(annotation: Any) -> str:
    inner, nullable = _optional(annotation)
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        (element,) = typing.get_args(inner)[:1] or (Any,)
        text = f"a list of {_kind(element)[2:] if _kind(element).startswith('a ') else _kind(element)}s"
    elif origin is dict or dataclasses.is_dataclass(inner):
        text = "a mapping"
    else:
        text = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(inner, "a value")
    return text + (" or null" if nullable else "")


def allowed(annotation: Any, rng: Range | None) -> str:
    """What a key takes, in words: "an integer >= 1", "one of encode, decode, roundtrip", "a number > 0 or null"."""
    if rng is not None and rng.choices is not None:
        return rng.describe() + (" or null" if _optional(annotation)[1] else "")
    kind = rng.kind if rng is not None and rng.kind else _kind(annotation)
    if rng is None:
        return kind
    bounds = rng.describe()
    if kind.endswith(" or null"):
        return f"{kind[:-len(' or null')]} {bounds} or null"
    return f"{kind} {bounds}"


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_show(v) for v in value) + "]"
    return str(value)


def _dataclass_of(annotation: Any) -> type | None:
    inner, _ = _optional(annotation)
    return inner if dataclasses.is_dataclass(inner) else None


def schema_fields(schema: type) -> dict[str, tuple[Any, Range | None]]:
    """{name: (type annotation, its Range or None)} of a schema dataclass."""
    hints = typing.get_type_hints(schema)
    return {f.name: (hints[f.name], f.metadata.get("range")) for f in dataclasses.fields(schema)}


def schema_keys(schema: type, prefix: str = "") -> list[str]:
    """Every dotted key a schema declares (inner nodes too)."""
    keys = []
    for name, (annotation, _) in schema_fields(schema).items():
        keys.append(prefix + name)
        inner = _dataclass_of(annotation)
        if inner is not None:
            keys += schema_keys(inner, f"{prefix}{name}.")
    return keys


def _is_open(annotation: Any) -> bool:
    """Whether any key may appear below a node of this type (Any, a Dict)."""
    inner, _ = _optional(annotation)
    return inner is Any or typing.get_origin(inner) is dict


def schema_type(schema: type, dotted: str) -> Any | None:
    """The annotation of a dotted key in `schema`; Any below an open mapping; None when the schema has no such key."""
    annotation: Any = schema
    for part in dotted.split("."):
        inner = _dataclass_of(annotation)
        if inner is None:
            return Any if _is_open(annotation) else None
        fields = schema_fields(inner)
        if part not in fields:
            return None
        annotation = fields[part][0]
    return annotation


def _walk(node: DictConfig, schema: type, prefix: str, keys: list[str], stage: str) -> Iterator[str]:
    fields = schema_fields(schema)
    for key in node.keys():
        key = str(key)
        dotted = prefix + key
        if not prefix and key == "hydra":
            continue
        if key not in fields:
            yield unknown_key_line(dotted, [k for k in keys if k != dotted], stage)
            continue
        annotation, rng = fields[key]
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            inner = _dataclass_of(annotation)
            if inner is not None:
                yield from _walk(child, inner, dotted + ".", keys, stage)
            elif not _matches({}, annotation):
                yield f"{dotted}: {allowed(annotation, rng)}, not a mapping"
            continue
        try:
            value = node[key]
            if isinstance(value, (ListConfig, DictConfig)):
                value = OmegaConf.to_container(value, resolve=True)
        except Exception:  # noqa: BLE001 - missing (???) or not resolvable here: the stage says what it needs
            continue
        if not _matches(value, annotation) or (rng is not None and not rng.allows(value)):
            yield f"{dotted}={_show(value)}: must be {allowed(annotation, rng)}"


def config_problems(cfg: DictConfig, stage: str) -> list[str]:
    """A line for each key of `cfg` (the composed config of `stage`) that its schema does not know, or whose value
    has another type or lies outside its range; empty for a stage without a schema."""
    schema = STAGE_SCHEMAS.get(stage)
    if schema is None:
        return []
    return list(_walk(cfg, schema, "", schema_keys(schema), stage))


def check_config(cfg: DictConfig, stage: str) -> None:
    """Raise ConfigError listing every problem of `config_problems`."""
    problems = config_problems(cfg, stage)
    if problems:
        raise ConfigError(f"{stage}: " + ("\n  ".join(["the config is refused:", *problems])
                                          if len(problems) > 1 else problems[0]))


# ------------------------------------------------------------------------------------- misspelt keys, did you mean
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
    match = difflib.get_close_matches(key, list(keys), n=1, cutoff=0.7)
    return match[0] if match else None


def unknown_key_line(key: str, keys: Iterable[str], stage: str) -> str:
    """`key` is not a key of the stage's config: the nearest valid one, else the keys beside it."""
    keys = list(keys)
    match = nearest_key(key, keys)
    parent = key.rsplit(".", 1)[0] if "." in key else ""
    below = [k[len(parent) + 1:] for k in keys if k.startswith(parent + ".")] if parent else keys
    siblings = [k for k in below if "." not in k]
    hint = (f": did you mean `{match}`?" if match else
            f"; {'`' + parent + '` has' if parent else 'its keys are'}: {', '.join(siblings)}" if siblings else "")
    return f"`{key}` is not a key of the {stage} config{hint} (`python -m stages.{stage} --cfg job` prints them all)"


def unknown_key_hints(config_name: str, overrides: Sequence[str]) -> list[str]:
    """A line for each `key=value` of `overrides` (not `+key=...`) whose key is not in `conf/<config_name>.yaml` as
    composed with the overrides' group choices, unless it lies under an open mapping (`zoo.mirrors.a3s`: Hydra's
    advice to add it with `+` is right there)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        if text.startswith("-"):
            continue
        try:
            parsed.append(parser.parse_override(text))
        except Exception:  # noqa: BLE001  (Hydra will say what is wrong with it)
            continue
    candidates = [o for o in parsed if not o.is_add() and not o.is_force_add() and not o.is_delete()
                  and not o.key_or_group.startswith("hydra") and not o.package and "/" not in o.key_or_group
                  and not (CONF / o.key_or_group).is_dir()]  # a key, not a group's choice
    if not candidates:
        return []
    choices = [o.input_line for o in parsed if o not in candidates and "." not in o.key_or_group
               and not o.is_sweep_override() and not o.is_delete()]
    GlobalHydra.instance().clear()
    cfg = None
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for attempt in (choices, []):
            try:
                cfg = compose(config_name, overrides=list(attempt))
                break
            except Exception:  # noqa: BLE001  (a bad group choice: Hydra will name it)
                continue
    GlobalHydra.instance().clear()
    if cfg is None:
        return []
    keys = config_keys(OmegaConf.to_container(cfg, resolve=False))
    schema = STAGE_SCHEMAS.get(config_name)
    hints = []
    for override in candidates:
        key = override.key_or_group
        if key in keys:
            continue
        parent = key.rsplit(".", 1)[0]
        if parent in keys and (schema is None or _is_open(schema_type(schema, parent))):
            continue  # a new key under an open mapping: Hydra's `+` advice is the right one
        hints.append(unknown_key_line(key, keys, config_name))
    return hints


def run_stage(main: Callable[[], Any], config_name: str, usage: Callable[[], str] | None = None) -> None:
    """Run a stage's `@hydra.main` function after answering each misspelt key of the command line with the nearest
    valid one (exit status 2, before Hydra composes; `--cfg` and the like go to Hydra untouched). `usage`, when
    given, is printed before Hydra's own `--help`: the stage's choices in words."""
    args = sys.argv[1:]
    if usage is not None and ("--help" in args or "-h" in args):
        print(usage() + "\n", flush=True)
    if not any(a.startswith("-") and a not in ("-m", "--multirun") for a in args):
        hints = unknown_key_hints(config_name, args)
        if hints:
            for line in hints:
                print(line, file=sys.stderr)
            raise SystemExit(USAGE_ERROR)
    main()


# ----------------------------------------------------------------------------------- the callback: before any work
def refuse(lines: Sequence[str]) -> None:
    """Print `lines` plainly to stderr and end the stage with USAGE_ERROR."""
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    raise SystemExit(USAGE_ERROR)


class StageChecks(Callback):
    """Hydra callback of every stage (conf/base.yaml `hydra.callbacks.checks`): `config_problems`, then the stage's
    `inputs` check (a `module.function` taking the config; set in the stage's YAML), before the run folder is made
    (a single run: on_run_start) or as each job of a sweep starts (on_job_start)."""

    def __init__(self, inputs: str | None = None):
        self.inputs = inputs

    def on_run_start(self, config: DictConfig, config_name: str | None = None, **kwargs: Any) -> None:
        self._check(config, config_name or str(config.hydra.job.config_name))

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if config.hydra.mode == RunMode.MULTIRUN:  # a single run was checked by on_run_start
            self._check(config, str(config.hydra.job.config_name))

    def _check(self, config: DictConfig, stage: str) -> None:
        problems = config_problems(config, stage)
        if problems:
            refuse([f"{stage}: the config is refused (nothing was run):", *(f"  {p}" for p in problems)])
        if self.inputs:
            from hydra.utils import get_method

            task = OmegaConf.masked_copy(config, [k for k in config.keys() if k != "hydra"])
            try:
                get_method(self.inputs)(task)
            except Exception as error:  # noqa: BLE001 - any refused input: one plain message, no traceback
                refuse([f"{stage}: {error}", "(nothing was run: no model loaded, no run folder made)"])
