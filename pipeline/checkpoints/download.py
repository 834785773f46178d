"""`stages.download`: the original's released models and data by name (pipeline/checkpoints/zoo.yaml).

`what=list` prints every entry (name, kind, setting, the paper's FID / MKL, here or not, what it is).
Otherwise each named entry (names, groups, fnmatch patterns) is fetched unless its install record says it is
here: `<file>.part` grows with HTTP Range across interruptions, the md5 is checked before anything is
unpacked (a mismatch deletes the file and fails naming file, expected and got), archives are checked member
by member (nothing outside the target, no links out, no devices) and unpacked into a temporary folder that
is then renamed into place. Entries that fail do not stop the others; the run fails at the end listing them.
"""
from __future__ import annotations

import logging
from typing import Any

from pipeline.checkpoints.zoo import Artefact, Zoo
from pipeline.runs.outcomes import Outcomes

log = logging.getLogger(__name__)


def _paper(entry: Artefact) -> str:
    paper = entry.info.get("paper") or {}
    return f"{paper['fid']} / {paper['mkl']}" if "fid" in paper else ""


def listing(zoo: Zoo) -> str:
    """A plain-text table of the registry with what is installed here."""
    rows = [("name", "kind", "setting", "paper FID / MKL", "here", "about")]
    data_sets: dict[str, list[Artefact]] = {}
    for entry in zoo.entries.values():
        if entry.kind == "data":
            data_sets.setdefault(str(entry.info["dataset"]), []).append(entry)
            continue
        rows.append((entry.name, entry.kind, ",".join(entry.settings), _paper(entry),
                     "yes" if zoo.installed(entry) else "-", entry.about))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:5], widths)) + "  " + r[5] for r in rows]
    lines.append("")
    for name, entries in data_sets.items():
        here = sum(zoo.installed(e) for e in entries)
        streams = sorted({str(e.info["stream"]) for e in entries})
        parts = sorted({str(e.info["part"]) for e in entries})
        lines.append(f"data {name}: {len(entries)} archives ({here} here) named {name}_<part>_<stream>, parts "
                     f"{parts[0]}..{parts[-1]} ({len(parts)}), streams {', '.join(streams)}; into "
                     f"{zoo.data_dir}/{entries[0].into.split('/')[0]}")
    lines.append("groups: " + "; ".join(f"{g} = {', '.join(p)}" for g, p in zoo.groups.items()))
    lines.append(f"models in {zoo.models_dir} (paths.models), data in {zoo.data_dir} (paths.data); registry "
                 f"{zoo.source}")
    return "\n".join(lines)


def _what(cfg) -> str | list[str]:
    from omegaconf import ListConfig

    return list(cfg.what) if isinstance(cfg.what, (list, ListConfig)) else str(cfg.what)


def check_inputs(cfg) -> None:
    """Before any transfer (pipeline.config.check.StageChecks): every name, group and pattern of `what` names
    something in the registry (an unknown one gets the nearest names)."""
    if _what(cfg) != "list":
        Zoo.from_cfg(cfg).expand(_what(cfg))


def run(cfg) -> dict[str, Any]:
    zoo = Zoo.from_cfg(cfg)
    what = _what(cfg)
    if what == "list":
        text = listing(zoo)
        print(text, flush=True)
        return {"listed": len(zoo.entries)}
    entries = zoo.expand(what)
    done, here, outcomes = [], [], Outcomes("download")
    for entry in entries:
        try:
            path, worked = zoo.install(entry, progress=bool(cfg.progress), keep_archives=bool(cfg.keep_archives),
                                       retries=int(cfg.retries), timeout=float(cfg.timeout_s))
        except Exception as error:  # noqa: BLE001 - reported per entry, then the run fails
            outcomes.failed(entry.name, error)
            continue
        (done if worked else here).append(entry.name)
        if worked:
            outcomes.written(f"{entry.name}: installed -> {path}")
        else:
            outcomes.skipped(f"{entry.name} -> {path}")
    outcomes.finish()
    if outcomes.any_failed:
        raise SystemExit("[download] failed:\n" + "\n".join(f"  {name}: {why}" for name, why in outcomes.failures))
    return {"fetched": done, "here": here}
