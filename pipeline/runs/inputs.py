"""What a stage reads, checked before it loads a model or makes a run folder: files and folders that must exist,
and checkpoint keys (a file, a log folder or a released name). Each error names the key, its value and the fix.
Each stage's `check_inputs(cfg)` is built from these (`pipeline.config.check.StageChecks` calls it)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.checkpoints.zoo import Zoo, ZooError


def unset(value: Any) -> bool:
    """An optional key left empty (null, "", the string "None")."""
    return value is None or str(value) in ("", "None", "null")


def require(value: str | os.PathLike, key: str, hint: str = "", folder: bool | None = None) -> Path:
    """The path `value` of `key`, which must exist (a folder when `folder`, a file when `folder` is False)."""
    path = Path(str(value)).expanduser()
    what = {True: "folder", False: "file", None: "file or folder"}[folder]
    if not path.exists():
        raise FileNotFoundError(f"{key}={value}: no such {what}" + (f"; {hint}" if hint else ""))
    if folder is not None and path.is_dir() != folder:
        raise FileNotFoundError(f"{key}={value} is a {'folder' if path.is_dir() else 'file'}, not a {what}"
                                + (f"; {hint}" if hint else ""))
    return path


def require_checkpoint(value: Any, key: str, cfg: Mapping[str, Any] | None = None, hint: str = "") -> None:
    """A checkpoint key: an existing file or folder, or a released model's name that is here or may be fetched
    (`zoo.fetch`); a word that is neither gets the registry's nearest names."""
    if unset(value):
        return
    text = str(value)
    if Path(text).expanduser().exists():
        return
    zoo = Zoo.from_cfg(cfg)
    if text in zoo:
        entry = zoo.get(text)
        if zoo.installed(entry) or zoo.fetch_allowed:
            return  # here, or fetched when the stage resolves it
        raise ZooError(f"{key}={text}: {text} is not downloaded (looked in {zoo.local_path(entry)}) and zoo.fetch="
                       f"false: run `python -m stages.download what={text}` where the internet can be reached, or "
                       f"pass a local path")
    if "/" not in text and os.sep not in text and not Path(text).suffix:
        try:
            zoo.get(text)  # raises, naming the nearest released names
        except ZooError as error:
            raise ZooError(f"{key}={text}: no such file, and {error}") from None
    raise FileNotFoundError(f"{key}={text}: no such checkpoint file or folder" + (f"; {hint}" if hint else ""))
