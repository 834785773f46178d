"""The original's released models and data by name: the registry (pipeline/checkpoints/zoo.yaml), the local cache,
`resolve`.

    resolve("vas_transformer_212feats_bn")   # -> paths.models/2021-06-09T15-17-18_vas_transformer (fetched if missing)
    resolve("/my/run/checkpoints/best.pt")   # -> the path, unchanged

Models land in `paths.models` (`SPECVQGAN_MODELS`, default ./released), data archives in `paths.data`, laid out
as the original's archives unpack. What is installed is recorded in `<paths.models>/.zoo/<name>.json` (the
md5 and the paths made), so a second run downloads nothing. Each URL is `<host base>/<file>`: the registry's
`hosts`, or `zoo.mirrors.<host>` (a mirror, or a test server on 127.0.0.1). `zoo.registry=PATH` reads
another registry of the same form; `zoo.fetch=false` never downloads (a missing model is then an error that
names the `python -m stages.download what=...` command to run).
"""
from __future__ import annotations

import difflib
import fcntl
import fnmatch
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.checkpoints.fetch import ChecksumError, DownloadError, fetch, md5_of, move_into, safe_extract
from pipeline.checkpoints.reading import check_whole
from pipeline.checkpoints.released import model_files
from pipeline.config.presets import preset_dict
from pipeline.files.writes import save_json

log = logging.getLogger(__name__)

REGISTRY = Path(__file__).with_name("zoo.yaml")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
RECORDS = ".zoo"        # folder of install records under paths.models
DOWNLOADS = ".downloads"  # verified archives (and .part files) before unpacking, under the destination root


class ZooError(RuntimeError):
    """A released model that is unknown, not installed with fetching off, or could not be fetched."""


def _archive_stem(name: str) -> str | None:
    for suffix in ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return None


@dataclass(frozen=True)
class Artefact:
    """One released thing: its files (remote paths under a host), where it lands and what it is."""

    name: str
    kind: str                                 # codebook, transformer, classifier, stats, vocoder, data
    about: str
    files: tuple[str, ...]                    # paths under the host's base URL
    md5: Mapping[str, str | None]             # file -> md5 (None: not published)
    size: Mapping[str, int | None] = field(default_factory=dict)  # file -> bytes: what verifies a file without md5
    readable: bool = False                    # without md5 or size: installed only when it reads whole (check_whole)
    host: str = "a3s"
    root: str = "models"                      # models -> paths.models, data -> paths.data
    into: str = ""                            # sub-folder of the root where files land / archives unpack
    path: str | None = None                   # what `resolve` returns, relative to the root (derived if None)
    info: Mapping[str, Any] = field(default_factory=dict)  # setting, condition, frames, features, paper, table

    @property
    def local(self) -> str:
        """The returned path relative to the root: an archive's stem (`<run>/`), a single file, or the folder
        holding several files."""
        if self.path is not None:
            return self.path
        base = Path(self.into)
        if len(self.files) == 1:
            name = self.files[0].split("/")[-1]
            return str(base / (_archive_stem(name) or name))
        return str(base / os.path.commonpath(self.files))

    @property
    def settings(self) -> list[str]:
        setting = self.info.get("setting")
        return [] if setting is None else [str(s) for s in (setting if isinstance(setting, list) else [setting])]


def _expand_data(sets: Mapping[str, Any], streams: Mapping[str, str]) -> dict[str, Artefact]:
    out = {}
    for set_name, spec in sets.items():
        for part, kinds in spec["md5"].items():
            for kind, md5 in kinds.items():
                name = f"{set_name}_{part}_{streams[kind]}"
                into = spec["into"].format(part=part)
                remote = spec["file"].format(part=part, kind=kind)
                out[name] = Artefact(name, "data", f"{spec['about']}: {part} / {kind}", (remote,), {remote: md5},
                                     host=spec.get("host", "a3s"), root="data", into=into, path=f"{into}/{kind}",
                                     info={"dataset": set_name, "part": str(part), "stream": streams[kind]})
    return out


def _artefact(name: str, spec: Mapping[str, Any]) -> Artefact:
    files = tuple(spec["files"]) if "files" in spec else (spec["file"],)
    md5, size = spec.get("md5"), spec.get("size")
    md5s = dict(md5) if isinstance(md5, Mapping) else {f: md5 for f in files}
    sizes = dict(size) if isinstance(size, Mapping) else {f: size for f in files}
    known = {"kind", "about", "file", "files", "md5", "size", "verify", "host", "root", "into", "path"}
    info = {k: v for k, v in spec.items() if k not in known}
    verify = spec.get("verify")
    if verify not in (None, "readable"):
        raise ZooError(f"{name}: verify={verify!r}: the registry knows `readable` (or no `verify:` key)")
    return Artefact(name, spec["kind"], spec.get("about", ""), files, md5s, sizes, verify == "readable",
                    host=spec.get("host", "a3s"),
                    root=spec.get("root", "models"), into=spec.get("into", ""), path=spec.get("path"), info=info)


class Zoo:
    """The registry plus where things go: `Zoo.from_cfg(cfg)` in a stage, `Zoo()` with the defaults."""

    def __init__(self, registry: str | os.PathLike | Mapping | None = None, models: str | os.PathLike | None = None,
                 data: str | os.PathLike | None = None, mirrors: Mapping[str, str] | None = None,
                 fetch: bool = True):
        if registry is None or isinstance(registry, (str, os.PathLike)):
            path = Path(registry or REGISTRY)
            if not path.is_file():
                raise FileNotFoundError(f"zoo.registry={path} does not exist")
            registry = yaml.safe_load(path.read_text())
            self.source = str(path)
        else:
            self.source = "<mapping>"
        self.hosts = {**registry.get("hosts", {}), **{k: v for k, v in (mirrors or {}).items() if v}}
        self.tables = dict(registry.get("tables") or {})
        self.groups = {k: list(v) for k, v in (registry.get("groups") or {}).items()}
        self.entries: dict[str, Artefact] = {n: _artefact(n, s) for n, s in (registry.get("models") or {}).items()}
        self.entries.update(_expand_data(registry.get("data") or {}, registry.get("streams") or {}))
        self.models_dir = Path(models if models is not None else os.environ.get("SPECVQGAN_MODELS", "released"))
        self.data_dir = Path(data if data is not None else os.environ.get("SPECVQGAN_DATA", "data"))
        self.fetch_allowed = bool(fetch)

    @classmethod
    def from_cfg(cls, cfg: Mapping[str, Any] | None = None) -> Zoo:
        """From a stage config's `paths.models`, `paths.data` and `zoo.*` (any of them may be missing)."""
        cfg = cfg or {}
        paths, zoo = cfg.get("paths") or {}, cfg.get("zoo") or {}
        mirrors = zoo.get("mirrors") or {}
        return cls(zoo.get("registry") or None, paths.get("models"), paths.get("data"),
                   {str(k): str(v) for k, v in mirrors.items() if v}, bool(zoo.get("fetch", True)))

    # ------------------------------------------------------------------------------------------ lookup
    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self.entries

    def get(self, name: str) -> Artefact:
        if name not in self.entries:
            close = difflib.get_close_matches(name, list(self.entries), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ZooError(f"{name!r} is not a released model{hint}: `python -m stages.download what=list` lists "
                           f"them")
        return self.entries[name]

    def expand(self, what: str | Iterable[str]) -> list[Artefact]:
        """Names, group names, fnmatch patterns and `kind:<kind>` (comma-separated or a list) -> entries."""
        items = [w.strip() for w in (what.split(",") if isinstance(what, str) else what) if str(w).strip()]
        chosen: list[str] = []
        for item in items:
            patterns = self.groups.get(item, [item])
            for pattern in patterns:
                if pattern.startswith("kind:"):
                    hits = [n for n, e in self.entries.items() if e.kind == pattern[len("kind:"):]]
                else:
                    hits = [n for n in self.entries if fnmatch.fnmatchcase(n, pattern)]
                if not hits:
                    self.get(pattern)  # raises with close matches
                chosen += [n for n in hits if n not in chosen]
        return [self.entries[n] for n in chosen]

    def url(self, entry: Artefact, file: str) -> str:
        if entry.host not in self.hosts:
            raise ZooError(f"{entry.name}: host {entry.host!r} has no base URL: set +zoo.mirrors.{entry.host}=URL")
        return f"{str(self.hosts[entry.host]).rstrip('/')}/{file}"

    def root(self, entry: Artefact) -> Path:
        return self.data_dir if entry.root == "data" else self.models_dir

    def local_path(self, entry: Artefact) -> Path:
        return self.root(entry) / entry.local

    def record_path(self, entry: Artefact) -> Path:
        return self.models_dir / RECORDS / f"{entry.name}.json"

    def record(self, entry: Artefact) -> dict[str, Any] | None:
        path = self.record_path(entry)
        return json.loads(path.read_text()) if path.is_file() else None

    def installed(self, entry: Artefact) -> bool:
        """Recorded as installed and every path it made is still there."""
        rec = self.record(entry)
        return rec is not None and all((self.root(entry) / p).exists() for p in rec.get("installed", []))

    # ----------------------------------------------------------------------------------------- install
    def install(self, entry: Artefact, *, progress: bool = True, keep_archives: bool = False, retries: int = 3,
                timeout: float = 60.0) -> tuple[Path, bool]:
        """Download, verify and unpack `entry` unless it is installed; returns (local path, whether work was
        done). Archives unpack into a temporary folder beside the destination first, then move into place.
        One process at a time per entry (a lock file beside its record): the processes of `accelerate launch`
        that all resolve the same name wait for the first one's download instead of writing the same file."""
        if self.installed(entry):
            return self.local_path(entry), False
        lock = self.record_path(entry).with_suffix(".lock")
        lock.parent.mkdir(parents=True, exist_ok=True)
        with open(lock, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                if self.installed(entry):  # another process finished it while this one waited
                    return self.local_path(entry), False
                return self._install(entry, progress=progress, keep_archives=keep_archives, retries=retries,
                                     timeout=timeout)
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _install(self, entry: Artefact, *, progress: bool, keep_archives: bool, retries: int,
                 timeout: float) -> tuple[Path, bool]:
        root = self.root(entry)
        downloads = root / DOWNLOADS
        pinned = (self.record(entry) or {}).get("md5", {})  # md5s got on a first fetch verified by its size
        unverifiable = [f for f in entry.files
                        if not (entry.md5.get(f) or pinned.get(f) or entry.size.get(f) or entry.readable)]
        if unverifiable:
            raise ZooError(f"{entry.name}: no published md5 and no size in the registry ({self.source}) for "
                           f"{', '.join(unverifiable)}, so a download could not be verified and is not attempted: "
                           f"record each file's size in bytes under `size:` (zoo.registry=PATH for a registry of "
                           f"your own), or fetch the files yourself and pass their local path")
        md5s, made = {}, []
        for file in entry.files:
            name = file.split("/")[-1]
            expected, size = entry.md5.get(file) or pinned.get(file), entry.size.get(file)
            fetched = downloads / (f"{entry.name}__{name}" if len(entry.files) > 1 else name)
            if fetched.exists():
                got = _verified(fetched, expected, size)
            else:
                got = fetch(self.url(entry, file), fetched, expected, size=size, retries=retries, timeout=timeout,
                            progress=progress)
            if expected is None and size is None:  # `verify: readable`: the file must read whole
                try:
                    check_whole(fetched)
                except ValueError as error:
                    fetched.unlink(missing_ok=True)
                    raise ChecksumError(f"{entry.name}: {error}; the file was deleted (it is fetched again next "
                                        f"time)") from None
                print(f"[download] {entry.name}: no published md5 or size for {file}; it reads whole; got md5 {got} "
                      f"(pinned in {self.record_path(entry)})", flush=True)
            elif expected is None:
                log.warning("%s: the original publishes no md5 for %s; its size matches the registry's %d bytes; "
                            "got md5 %s (pinned from now on)", entry.name, file, size, got)
                print(f"[download] {entry.name}: no published md5 for {file}; its size is the registry's ({size} "
                      f"bytes); got md5 {got} (pinned in {self.record_path(entry)})", flush=True)
            md5s[file] = got
            target = root / entry.into
            if _archive_stem(name) is not None:
                made += self._unpack(fetched, target, root)
                if not keep_archives:
                    fetched.unlink()
            else:
                dest = target / (file if len(entry.files) > 1 else name)
                dest.parent.mkdir(parents=True, exist_ok=True)
                if keep_archives:
                    shutil.copyfile(fetched, dest)
                else:
                    os.replace(fetched, dest)
                made.append(str(dest.relative_to(root)))
        if not self.local_path(entry).exists():  # a data archive laid out otherwise than the inferred layout
            log.warning("%s: %s is not where the archive put its files (it made %s)", entry.name,
                        self.local_path(entry), ", ".join(made))
        save_json(self.record_path(entry), {"name": entry.name, "md5": md5s, "installed": sorted(set(made)),
                                            "urls": [self.url(entry, f) for f in entry.files]})
        return self.local_path(entry), True

    def _unpack(self, archive: Path, target: Path, root: Path) -> list[str]:
        target.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target))
        try:
            tops = safe_extract(archive, tmp)
            for top in tops:
                move_into(tmp / top, target / top)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return [str((target / top).relative_to(root)) for top in tops]

    # ----------------------------------------------------------------------------------------- resolve
    def resolve(self, name_or_path: str | os.PathLike, fetch: bool = True) -> Path:
        """A local file or folder as is; a released name -> its local path, fetched if missing (when both
        `fetch` and zoo.fetch allow). A bare word that is neither raises an error with the close names."""
        text = str(name_or_path)
        path = Path(text).expanduser()
        if path.exists() or text not in self.entries and ("/" in text or os.sep in text or path.suffix):
            return path
        entry = self.get(text)
        if self.installed(entry):
            return self.local_path(entry)
        command = f"python -m stages.download what={entry.name}"
        if not (fetch and self.fetch_allowed):
            raise ZooError(f"{entry.name} is not downloaded (looked in {self.local_path(entry)}): run `{command}` "
                           f"(with paths.models={self.models_dir} if you changed it), or pass a local path")
        print(f"[zoo] {entry.name} is not in {self.root(entry)}: fetching it ({entry.about or entry.kind})", flush=True)
        try:
            return self.install(entry)[0]
        except (DownloadError, OSError) as error:
            raise ZooError(f"could not fetch {entry.name}: {error}\n  Run `{command}` where the internet can be "
                           f"reached (then point paths.models at that folder), or pass a local path") from error


def _verified(path: Path, md5: str | None, size: int | None = None) -> str:
    """The md5 of an already downloaded archive; a size or md5 mismatch deletes it (it is fetched again next
    time)."""

    if size is not None and path.stat().st_size != size:
        got_size = path.stat().st_size
        path.unlink()
        raise ChecksumError(f"{path}: {got_size} bytes, the registry records {size}; the file was deleted")
    got = md5_of(path)
    if md5 is not None and got != md5:
        path.unlink()
        raise ChecksumError(f"{path}: md5 {got} differs from the published {md5}; the file was deleted")
    return got


def resolve(name_or_path: str | os.PathLike | None, fetch: bool = True, cfg: Mapping[str, Any] | None = None
            ) -> Path | None:
    """`Zoo.from_cfg(cfg).resolve(name_or_path, fetch)`; None stays None (an optional checkpoint left unset)."""
    if name_or_path is None or str(name_or_path) in ("", "None", "null"):
        return None
    text = str(name_or_path)
    if Path(text).expanduser().exists():  # the common case: no registry to read
        return Path(text).expanduser()
    return Zoo.from_cfg(cfg).resolve(text, fetch=fetch)


def released_entry(name_or_path: str | os.PathLike | None, cfg: Mapping[str, Any] | None = None) -> Artefact | None:
    """The registry entry a value names, or whose local path it is; None for anything else."""
    if name_or_path is None:
        return None
    zoo = Zoo.from_cfg(cfg)
    text = str(name_or_path)
    if text in zoo:
        return zoo.get(text)
    path = Path(text).expanduser().resolve()
    for entry in zoo.entries.values():
        if entry.root == "models" and zoo.local_path(entry).resolve() == path:
            return entry
    return None


def features_preset(kind: str) -> dict[str, Any]:
    """conf/features/<kind>.yaml with what it inherits, its sizes resolved from conf/base.yaml's `clip` node, as a
    plain dict (what a released model's features are)."""
    return preset_dict("features", kind)


def features_of_config(config: Mapping[str, Any]) -> str | None:
    """The backbone an original transformer was trained on, from its project config's feature folders
    (`feature_resnet50_...` or `feature_rgb_bninception_...`); None for class and No-Feats models."""
    data = (config.get("data") or {}).get("params") or {}
    cond = ((config.get("model") or {}).get("params") or {}).get("cond_stage_key")
    if data.get("replace_feats_with_random") or cond not in (None, "feature"):
        return None
    folder = str(data.get("rgb_feats_dir_path") or "")
    return "resnet50" if "resnet50" in folder else "bninception" if "bninception" in folder else None


def released_meta(name_or_path: str | os.PathLike, cfg: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """What the sample stage needs beyond the weights for a released transformer: {"features": the preset of its
    backbone (conf/features) or None, "zoo": entry name or None}; None when the value is not the original's (a
    registry name, its cached folder, an original log folder or a .ckpt): then it is one of ours."""

    entry = released_entry(name_or_path, cfg)
    if entry is not None:
        if entry.kind != "transformer":
            return None
        kind = entry.info.get("features")
        return {"features": features_preset(str(kind)) if kind else None, "zoo": entry.name}
    path = Path(str(name_or_path)).expanduser()
    if not path.exists():
        return None
    config = model_files(path, "transformer").config
    if config is None and path.suffix != ".ckpt":
        return None
    kind = features_of_config(config or {})
    return {"features": features_preset(kind) if kind else None, "zoo": None}


def locate(path_or_name: str | os.PathLike, kind: str) -> Path:
    """The local path of a checkpoint file or log folder to load as `kind` ("codebook", "transformer",
    "vocoder", "classifier").

    The one place where a released model's *name* (e.g. `vas_transformer_212feats_bn`) is resolved to its
    cached download (`pipeline.checkpoints.zoo`, fetched when missing, with the default cache and mirrors; stages
    resolve
    names with their own `paths.models` / `zoo.*` before calling a loader).
    """
    path = Path(path_or_name).expanduser()
    if not path.exists():
        zoo = Zoo.from_cfg(None)
        if str(path_or_name) in zoo:
            return zoo.resolve(str(path_or_name))
        raise FileNotFoundError(f"{kind} checkpoint {path} does not exist: {_WHAT_TO_PASS.get(kind, 'pass')} a "
                                f"checkpoint file or a log folder (the original's <stamp>_<name>/ with checkpoints/ "
                                f"and configs/, or one of our run folders)")
    return path


_WHAT_TO_PASS = {"codebook": "set codebook.ckpt to"}  # the one key every stage names alike
