"""A real one-node SLURM cluster for the tests: munged, MariaDB, slurmdbd, slurmctld and slurmd from Debian's
packages, each started by hand (no systemd) with its configuration, state, sockets and logs in one folder.

Accounting (slurmdbd on MariaDB) is not optional: without it `sacct` fails, submitit sees every job as UNKNOWN
and waiting on a job that died without a result hangs (../shared/notes/slurm-local.md). `make test` installs the
packages (launch/apt_install.sh); `unavailable()` says why a cluster cannot start here, for a skip.
Every daemon runs as root with its own pid file, and `stop` ends exactly those pids.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch")


def unavailable() -> str | None:
    """Why a cluster cannot start on this machine, or None when it can."""
    missing = [d for d in DAEMONS if not shutil.which(d) and not Path("/usr/sbin", d).exists()]
    if missing:
        return (f"no local SLURM cluster: {', '.join(missing)} not installed (the Makefile's APT_PACKAGES; "
                f"`make test` installs them when run as root)")
    if os.geteuid() != 0:
        return "no local SLURM cluster: starting slurmd and slurmdbd needs root"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """One node (`hostname -s`, all CPUs, 90% of the memory) in partition `debug`; clients find it through
    `env` (SLURM_CONF), which `start` also puts into os.environ so that submitit's sbatch/squeue/sacct see it."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.host = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"
        self.pids: dict[str, Path] = {}
        self.env = {"SLURM_CONF": str(self.conf)}

    # --- start ----------------------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> SlurmCluster:
        tic = time.monotonic()
        for sub in ("state", "spool", "log", "db", "run"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        self._start_mariadb(timeout)
        self._write_configs()
        os.environ.update(self.env)
        self._daemon("slurmdbd", [_exe("slurmdbd")], self.root / "run" / "slurmdbd.pid")
        self._wait(lambda: self._port_open(self.dbd_port), "slurmdbd to listen", timeout)
        self._daemon("slurmctld", [_exe("slurmctld"), "-f", str(self.conf)], self.root / "run" / "slurmctld.pid")
        self._wait(lambda: self.run_ok("scontrol", "ping"), "slurmctld to answer", timeout)
        self._daemon("slurmd", [_exe("slurmd"), "-f", str(self.conf)], self.root / "run" / "slurmd.pid")
        self._wait(lambda: self.run_ok("sinfo", "-h", "-o", "%T") == "idle", "the node to be idle", timeout)
        self._wait(lambda: self.run_ok("sacct", "-n", "-X") is not None, "accounting (sacct)", timeout)
        self.start_s = time.monotonic() - tic
        return self

    def _start_munge(self) -> None:
        """Use a running munged on the default socket (not ours to stop), else start one there: SLURM's
        persistent connection to slurmdbd ignores AuthInfo=socket, so another socket is not an option."""
        if self._munge_works():
            return
        key, run = Path("/etc/munge/munge.key"), Path("/run/munge")
        if not key.exists():
            subprocess.run([_exe("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        run.mkdir(parents=True, exist_ok=True)
        pid = self.root / "run" / "munged.pid"
        subprocess.run([_exe("munged"), "--force", f"--pid-file={pid}",
                        f"--log-file={self.root / 'log' / 'munged.log'}",
                        f"--seed-file={self.root / 'run' / 'munged.seed'}"], check=True, capture_output=True)
        self.pids["munged"] = pid
        self._wait(self._munge_works, "munged to encode credentials", 20)

    @staticmethod
    def _munge_works() -> bool:
        encode = subprocess.run(["munge", "-n"], capture_output=True, check=False)
        return encode.returncode == 0 and subprocess.run(["unmunge"], input=encode.stdout, capture_output=True,
                                                         check=False).returncode == 0

    def _start_mariadb(self, timeout: float) -> None:
        datadir, run = self.root / "db", self.root / "run"
        self.db_port = _free_port()
        self.db_socket = run / "mariadb.sock"
        subprocess.run([_exe("mariadb-install-db"), "--no-defaults", f"--datadir={datadir}", "--user=root",
                        "--auth-root-authentication-method=socket", "--skip-test-db"],
                       check=True, capture_output=True, timeout=timeout)
        pid = run / "mariadbd.pid"
        self._daemon("mariadbd", [
            _exe("mariadbd"), "--no-defaults", f"--datadir={datadir}", f"--socket={self.db_socket}",
            f"--port={self.db_port}", "--bind-address=127.0.0.1", "--skip-name-resolve", "--user=root",
            f"--pid-file={pid}", f"--log-error={self.root / 'log' / 'mariadb.log'}", "--innodb-buffer-pool-size=32M",
            "--skip-log-bin"], pid, background=True)
        self._wait(lambda: self._sql("SELECT 1"), "MariaDB to accept connections", timeout)
        assert self._sql("CREATE DATABASE IF NOT EXISTS slurm_acct_db; "
                         "CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm'; "
                         "GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"), "MariaDB setup"

    def _sql(self, statement: str) -> bool:
        result = subprocess.run([_exe("mariadb"), "--no-defaults", f"--socket={self.db_socket}", "-uroot",
                                 "-e", statement], capture_output=True, text=True, check=False)
        return result.returncode == 0

    def _write_configs(self) -> None:
        cpus = os.cpu_count() or 1
        mem_mb = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20 * 0.9)
        self.ctld_port, self.slurmd_port, self.dbd_port = _free_port(), _free_port(), _free_port()
        run, log = self.root / "run", self.root / "log"
        dbd = self.root / "slurmdbd.conf"
        dbd.write_text("\n".join([
            "AuthType=auth/munge", "DbdHost=localhost", f"DbdPort={self.dbd_port}", "SlurmUser=root",
            f"LogFile={log / 'slurmdbd.log'}", f"PidFile={run / 'slurmdbd.pid'}",
            "StorageType=accounting_storage/mysql", "StorageHost=127.0.0.1", f"StoragePort={self.db_port}",
            "StorageUser=slurm", "StoragePass=slurm", "StorageLoc=slurm_acct_db", ""]))
        dbd.chmod(0o600)
        self.env["SLURMDBD_CONF"] = str(dbd)  # slurmdbd has no -f; it reads this variable
        self.conf.write_text("\n".join([
            "ClusterName=tests", f"SlurmctldHost={self.host}(127.0.0.1)", f"SlurmctldPort={self.ctld_port}",
            f"SlurmdPort={self.slurmd_port}", "SlurmUser=root", "SlurmdUser=root",
            "AuthType=auth/munge", "CredType=cred/munge",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core", "SchedulerType=sched/backfill", "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/slurmdbd", "AccountingStorageHost=localhost",
            f"AccountingStoragePort={self.dbd_port}", "JobCompType=jobcomp/none", "ReturnToService=2",
            "MailProg=/bin/true", "MinJobAge=300", "KillWait=10", "MpiDefault=none", "SchedulerParameters=defer",
            f"StateSaveLocation={self.root / 'state'}", f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={run / 'slurmctld.pid'}", f"SlurmdPidFile={run / 'slurmd.pid'}",
            f"SlurmctldLogFile={log / 'slurmctld.log'}", f"SlurmdLogFile={log / 'slurmd.log'}",
            f"PlugStackConfig={self.root / 'plugstack.conf'}",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem_mb} State=UNKNOWN",
            f"PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP", ""]))
        (self.root / "plugstack.conf").write_text("")

    def _daemon(self, name: str, cmd: list[str], pid_file: Path, background: bool = False) -> None:
        """Start a daemon that writes `pid_file` (it forks itself, or runs as our child when `background`)."""
        env = {**os.environ, **self.env}
        log = open(self.root / "log" / f"{name}.out", "ab")
        if background:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
            self._wait(lambda: pid_file.exists() or proc.poll() is not None, f"{name}'s pid file", 60)
        else:
            subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, check=True, timeout=60)
        log.close()
        self.pids[name] = pid_file
        if not pid_file.exists():
            self._wait(lambda: pid_file.exists(), f"{name}'s pid file", 30)

    # --- use ------------------------------------------------------------------------------------------
    def run_ok(self, *cmd: str) -> str | None:
        """stdout of a client command (stripped), or None when it fails."""
        result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **self.env},
                                check=False, timeout=60)
        return result.stdout.strip() if result.returncode == 0 else None

    def job_field(self, job_id: str, field: str) -> str | None:
        """One field of `scontrol show job` (e.g. JobState, Reason, Restarts), or None once the job is gone."""
        out = self.run_ok("scontrol", "-o", "show", "job", str(job_id))
        for token in (out or "").split():
            key, _, value = token.partition("=")
            if key == field:
                return value
        return None

    def release(self, job_id: str) -> None:
        """A requeued job waits ~121 s (Reason=BeginTime); start it now."""
        self.run_ok("scontrol", "update", f"JobId={job_id}", "StartTime=now")

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for name in ("slurmctld", "slurmd", "slurmdbd"):
            path = self.root / "log" / f"{name}.log"
            if path.exists():
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)

    @staticmethod
    def _port_open(port: int) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    def _wait(self, ready, what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            time.sleep(0.25)
        raise RuntimeError(f"local SLURM cluster: timed out after {timeout:.0f} s waiting for {what}\n"
                           + self.log_tail())

    # --- stop -----------------------------------------------------------------------------------------
    def stop(self, timeout: float = 20.0) -> None:
        """Cancel what is left, wait for the queue to drain (a job step outliving slurmd would stay forever),
        then SIGTERM to each daemon by its pid file (slurmd first, munged last), SIGKILL if it lingers."""
        if self.pids and self.run_ok("squeue", "-h", "-o", "%i"):
            self.run_ok("scancel", "--full", "--user=root")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.run_ok("squeue", "-h", "-o", "%i"):
                time.sleep(0.25)
        for name in ("slurmd", "slurmctld", "slurmdbd", "mariadbd", "munged"):
            pid_file = self.pids.get(name)
            with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
                pid = int(pid_file.read_text().split()[0]) if pid_file else 0
                if pid <= 0:
                    continue
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline and _alive(pid):
                    time.sleep(0.1)
                if _alive(pid):
                    os.kill(pid, signal.SIGKILL)
        self.pids.clear()  # stopping twice (fixture teardown, then atexit) signals nothing the second time
        for key in self.env:
            os.environ.pop(key, None)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(FileNotFoundError):  # a zombie child of ours counts as gone
        if Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z"):
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
            return False
    return True
