"""One process per run folder: a lock file that names its holder, works on a shared file system, and does not stay
stuck when its holder dies.

`hold_run_folder(folder)` takes `<folder>/.lock` for the duration of a stage (training, sampling, evaluation, the
app; an extraction run, whose array tasks share one folder by design, locks each shard alone: `name=`). A second
process refuses at once with RunFolderBusy, naming the holder: host, pid, SLURM job (and array task), since when,
and how old its heartbeat is.

How, on NFS as on a local disk (no flock, which NFS clients may not carry across nodes):
- taking it: the holder's record (JSON: host, boot id, pid and its start time, SLURM job, array task and restart
  count, command, since, a random token) is written to a unique file beside the lock and hard-linked to `.lock`.
  link() is atomic on NFS as on local file systems: exactly one process creates the name. Where an NFS reply was
  lost and link() reports an error although it succeeded, the unique file's link count (2) says so;
- the heartbeat: a daemon thread touches the lock file every HEARTBEAT_S seconds (its mtime, which NFS sets from the
  server's clock) after checking that the lock still holds its token. A holder that finds its lock taken over (a
  definite other token, or no file) stops its own process with SIGTERM, which a training stage answers by saving
  its step and exiting;
- stale (the rule): a lock is taken over when (1) its holder ran on this host (same host name and boot) and its
  process is gone (no such pid, or a pid reused by a younger process), or (2) its holder is an earlier start of this
  same SLURM job (same job and array task, another restart count: SLURM runs one start of a job at a time), or
  (3) its heartbeat is older than STALE_AFTER_S seconds by this host's clock (the lock's mtime is read after opening
  the file, which makes an NFS client fetch fresh attributes);
- taking over: the stale lock is renamed to a unique name (atomic: of several processes that judged it stale, one
  moves it), its token checked to be the stale one (a fresh lock moved by mistake is linked back), then removed,
  and the lock is taken as above. A bounded number of attempts.
Within one process the lock is re-entrant (a stage that runs another stage's `run` on its own folder). Of several
ranks of one launch (torchrun, accelerate launch, a multi-task SLURM job) only rank 0 takes it.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"
HEARTBEAT_S = 15.0      # seconds between touches of the lock file
STALE_AFTER_S = 120.0   # a heartbeat older than this (8 missed beats) frees the lock
ATTEMPTS = 5            # takeovers tried before giving up (each needs another process to win a race)


class RunFolderBusy(RuntimeError):
    """Another process holds the run folder."""


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _start_ticks(pid: int) -> int | None:
    """When process `pid` started (clock ticks since boot, /proc/<pid>/stat field 22); None where unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    now = _start_ticks(pid)
    return start_ticks is None or now is None or now == start_ticks


def is_main_rank() -> bool:
    """Rank 0 of a launch (or a process started alone): torchrun and accelerate set RANK, our SLURM launcher too."""
    return os.environ.get("RANK", "0") == "0"


def holder_record(name: str | None) -> dict[str, Any]:
    """Who is taking the lock (written into it)."""
    env = os.environ
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "start_ticks": _start_ticks(os.getpid()), "slurm_job_id": env.get("SLURM_JOB_ID"),
            "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
            "slurm_restart": int(env.get("SLURM_RESTART_COUNT", 0)) if "SLURM_JOB_ID" in env else None,
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "command": " ".join(sys.argv)[:300], "name": name,
            "token": uuid.uuid4().hex}


def describe(holder: dict[str, Any], age: float | None) -> str:
    """`pid 123 on host n07 (SLURM job 45, array task 3) since <time>, last heartbeat 3 s ago`."""
    slurm = ""
    if holder.get("slurm_job_id"):
        task = f", array task {holder['slurm_array_task_id']}" if holder.get("slurm_array_task_id") else ""
        slurm = f" (SLURM job {holder['slurm_job_id']}{task})"
    beat = "" if age is None else f", last heartbeat {age:.0f} s ago"
    return f"pid {holder.get('pid')} on host {holder.get('host')}{slurm} since {holder.get('since')}{beat}"


class RunLock:
    """The lock of one run folder (or of one named part of it, e.g. an extraction shard)."""

    def __init__(self, folder: str | os.PathLike, name: str | None = None, heartbeat_s: float = HEARTBEAT_S,
                 stale_after_s: float = STALE_AFTER_S):
        self.folder = Path(folder)
        self.name = name
        suffix = "" if name is None else "-" + "".join(c if c.isalnum() else "_" for c in name)
        self.path = self.folder / f"{LOCK_FILE}{suffix}"
        self.heartbeat_s, self.stale_after_s = float(heartbeat_s), float(stale_after_s)
        self.record: dict[str, Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- reading
    def read(self, path: Path | None = None) -> tuple[dict[str, Any] | None, float | None]:
        """(the holder's record or {} when unreadable, the heartbeat's age in s); (None, None) when there is no lock."""
        try:
            with open(path or self.path, "rb") as f:
                age = time.time() - os.fstat(f.fileno()).st_mtime
                text = f.read()
        except FileNotFoundError:
            return None, None
        try:
            record = json.loads(text)
        except ValueError:
            record = {}
        return (record if isinstance(record, dict) else {}), age

    def stale_reason(self, holder: dict[str, Any], age: float) -> str | None:
        """Why `holder`'s lock may be taken over (the module docstring's rule), or None while it holds."""
        if holder.get("host") == socket.gethostname() and holder.get("boot_id") == _boot_id() \
                and isinstance(holder.get("pid"), int) and not _alive(holder["pid"], holder.get("start_ticks")):
            return f"its process {holder['pid']} on this host is gone"
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job_id") == job \
                and holder.get("slurm_array_task_id") == os.environ.get("SLURM_ARRAY_TASK_ID") \
                and holder.get("slurm_restart") != int(os.environ.get("SLURM_RESTART_COUNT", 0)):
            return f"it is an earlier start of this SLURM job {job} (requeued)"
        if age > self.stale_after_s:
            return f"its heartbeat is {age:.0f} s old (more than {self.stale_after_s:.0f} s)"
        return None

    # --- taking and giving back
    def acquire(self) -> None:
        """Take the lock or raise RunFolderBusy naming its holder."""
        self.folder.mkdir(parents=True, exist_ok=True)
        for _ in range(ATTEMPTS):
            record = holder_record(self.name)
            if self._link(record):
                self.record = record
                self._start_heartbeat()
                return
            holder, age = self.read()
            if holder is None:
                continue  # given back in the meantime: try again
            reason = self.stale_reason(holder, age)
            if reason is None:
                raise RunFolderBusy(self.busy_message(holder, age))
            log.warning("taking over %s from %s: %s", self.path, describe(holder, age), reason)
            self._break(holder.get("token"))
        raise RunFolderBusy(f"{self.path}: could not take the lock in {ATTEMPTS} attempts (other processes keep "
                            f"taking it over); try again")

    def busy_message(self, holder: dict[str, Any], age: float) -> str:
        what = f"run folder {self.folder}" + (f" ({self.name})" if self.name else "")
        who = describe(holder, age) if holder else f"an unknown process (unreadable {self.path})"
        stop = (f" (scancel {holder['slurm_job_id']})" if holder.get("slurm_job_id")
                else f" (kill {holder.get('pid')} on {holder.get('host')})" if holder else "")
        return (f"{what} is in use by {who}: one process per run folder. Wait for it to end or stop it{stop}; a holder "
                f"that died frees it by itself (at once on its own host or for its requeued SLURM job, elsewhere after "
                f"{self.stale_after_s:.0f} s without a heartbeat). Or give this run its own folder (+run_tag=NAME)")

    def _link(self, record: dict[str, Any]) -> bool:
        tmp = self.folder / f"{self.path.name}.{record['token']}.tmp"
        with open(tmp, "w") as f:
            json.dump(record, f)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # NFS: the reply to a link that succeeded can be lost; the link count tells
            try:
                return os.stat(tmp).st_nlink == 2
            except OSError:
                return False
        finally:
            tmp.unlink(missing_ok=True)

    def _break(self, stale_token: str | None) -> None:
        grave = self.folder / f"{self.path.name}.{uuid.uuid4().hex}.broken"
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return  # another process moved it first
        moved, _ = self.read(grave)
        if moved is not None and moved.get("token") != stale_token:  # a fresh lock taken in between: put it back
            try:
                os.link(grave, self.path)
            except FileExistsError:
                log.error("%s: a fresh lock was moved by mistake and another took its place", self.path)
        grave.unlink(missing_ok=True)

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        holder, _ = self.read()
        if self.record is not None and holder is not None and holder.get("token") == self.record["token"]:
            self.path.unlink(missing_ok=True)
        self.record = None

    # --- the heartbeat
    def _start_heartbeat(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"lock heartbeat {self.path}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                holder, _ = self.read()
                if holder is None or holder.get("token") not in (None, self.record["token"]):
                    log.error("%s was taken over by %s: stopping this process (SIGTERM)", self.path,
                              describe(holder, None) if holder else "another process (the lock is gone)")
                    os.kill(os.getpid(), signal.SIGTERM)
                    return
                os.utime(self.path)
            except OSError as e:  # a passing file-system error: the next beat tries again
                log.warning("lock heartbeat on %s failed: %s", self.path, e)


_HELD: dict[Path, list] = {}  # lock path -> [RunLock, depth]: re-entrant within a process
_HELD_GUARD = threading.Lock()


@contextmanager
def hold_run_folder(folder: str | os.PathLike, name: str | None = None) -> Iterator[RunLock | None]:
    """Hold the run folder's lock (or its part `name`'s) for the block; rank 0 of a launch only (None elsewhere)."""
    if not is_main_rank():
        yield None
        return
    lock = RunLock(folder, name)
    key = lock.path.resolve()
    with _HELD_GUARD:
        held = _HELD.get(key)
        if held is None:
            lock.acquire()
            held = _HELD[key] = [lock, 0]
        held[1] += 1
    try:
        yield held[0]
    finally:
        with _HELD_GUARD:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                held[0].release()
