"""What a stage did, said the same way by every stage, on the screen and in its log file.

    done = Outcomes("sample")
    done.skipped(wav)                       # "[sample] skipped (already there): out/clip_sample_0.wav"
    done.written(wav)                       # "[sample] written: out/clip_sample_1.wav"
    done.failed("clip.mp4", "truncated")    # "[sample] failed: clip.mp4: truncated"
    done.finish()                           # "[sample] 1 written, 1 skipped (already there), 1 failed"

Each line is printed (stdout) and written to the log files of the run (the file handlers of the root logger:
Hydra's `<run>/<stage>.log`), so a rerun's log says what it skipped as the screen does. A data-set stage with
thousands of items passes `per_item=False`: only failures and the summary are said.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


def say(message: str, level: int = logging.INFO) -> None:
    """Print `message` and write it to the run's log files (not through the console handler: printed once)."""
    print(message, flush=True)
    record = log.makeRecord(log.name, level, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler) and record.levelno >= handler.level:
            handler.handle(record)


@dataclass
class Outcomes:
    """The items a stage wrote, skipped (already there) and failed, each said as it happens (module docstring)."""

    stage: str
    per_item: bool = True
    counts: dict[str, int] = field(default_factory=lambda: {"written": 0, "skipped": 0, "failed": 0})
    failures: list[tuple[str, str]] = field(default_factory=list)

    def _item(self, kind: str, what: str | os.PathLike, level: int = logging.INFO, force: bool = False) -> None:
        self.counts[kind.split(" ")[0]] += 1
        if self.per_item or force:
            say(f"[{self.stage}] {kind}: {what}", level)

    def written(self, what: str | os.PathLike) -> None:
        self._item("written", what)

    def skipped(self, what: str | os.PathLike, why: str = "already there") -> None:
        self._item(f"skipped ({why})", what)

    def failed(self, what: str | os.PathLike, reason: str | BaseException) -> None:
        reason = reason if isinstance(reason, str) else f"{type(reason).__name__}: {reason}"
        self.failures.append((str(what), reason))
        self._item("failed", f"{what}: {reason}", logging.WARNING, force=True)

    def add(self, written: int = 0, skipped: int = 0, failed: int = 0) -> None:
        """Counts of items said elsewhere (e.g. by a progress bar): only the summary reports them."""
        for kind, n in (("written", written), ("skipped", skipped), ("failed", failed)):
            self.counts[kind] += n

    @property
    def any_failed(self) -> bool:
        return self.counts["failed"] > 0

    def summary(self) -> str:
        c = self.counts
        return f"{c['written']} written, {c['skipped']} skipped (already there), {c['failed']} failed"

    def finish(self, where: str | os.PathLike | None = None) -> str:
        """Say the summary (and where the outputs are); returns the line."""
        line = f"[{self.stage}] {self.summary()}" + (f"; in {where}" if where else "")
        say(line, logging.WARNING if self.any_failed else logging.INFO)
        return line
