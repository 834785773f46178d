"""One process per run folder (pipeline/runs/lock.py): a second process refuses at once naming the holder, a lock
left by a killed process is taken over, a lock of another host frees itself only when its heartbeat stops, and of
several processes racing for a stale lock exactly one gets it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipeline.runs.lock import LOCK_FILE, STALE_AFTER_S, RunFolderBusy, RunLock, hold_run_folder, holder_record
from tests.helpers import ROOT, make_codebook, make_dataset

HOLD = textwrap.dedent("""
    import sys, time
    from pipeline.runs.lock import RunLock, RunFolderBusy
    lock = RunLock(sys.argv[1], heartbeat_s=float(sys.argv[3]))
    go = sys.argv[2]
    while go != "-" and not __import__("os").path.exists(go):
        time.sleep(0.01)
    try:
        lock.acquire()
    except RunFolderBusy as e:
        print("busy:", e, flush=True)
        sys.exit(3)
    print("held", flush=True)
    time.sleep(float(sys.argv[4]))
    lock.release()
""")


def _holder(folder: Path, go: str = "-", heartbeat: float = 15.0, hold: float = 60.0) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLD, str(folder), go, str(heartbeat), str(hold)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_held(proc: subprocess.Popen) -> None:
    line = proc.stdout.readline()
    assert line.strip() == "held", line + proc.stderr.read()


def _foreign(folder: Path, age: float, **fields) -> Path:
    """A lock written by a process on another host, its heartbeat `age` seconds old."""
    record = {**holder_record(None), "host": "node-elsewhere", "pid": 4242, "slurm_job_id": "777", **fields}
    path = folder / LOCK_FILE
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    os.utime(path, (time.time() - age, time.time() - age))
    return path


def test_a_second_process_refuses_naming_the_holder_and_a_killed_holders_lock_is_taken_over(tmp_path):
    first = _holder(tmp_path)
    try:
        _wait_held(first)
        tic = time.monotonic()
        second = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "-", "15", "0"], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
        assert second.returncode == 3, second.stderr
        assert time.monotonic() - tic < 30  # at once: no waiting for the holder
        assert f"is in use by pid {first.pid} on host {socket.gethostname()} since " in second.stdout
        assert "last heartbeat 0 s ago" in second.stdout or "last heartbeat 1 s ago" in second.stdout
        assert f"kill {first.pid}" in second.stdout
    finally:
        first.kill()  # SIGKILL: the lock stays behind
        first.wait()
    assert (tmp_path / LOCK_FILE).exists()
    third = subprocess.run([sys.executable, "-c", HOLD, str(tmp_path), "-", "15", "0"], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
    assert third.returncode == 0 and third.stdout.strip() == "held", third.stdout + third.stderr
    assert f"taking over {tmp_path / LOCK_FILE}" in third.stderr and f"process {first.pid} on this host is gone" \
        in third.stderr
    assert not (tmp_path / LOCK_FILE).exists()  # given back at the end


def test_another_hosts_lock_holds_while_its_heartbeat_is_fresh(tmp_path):
    _foreign(tmp_path, age=5, slurm_array_task_id="3")
    with pytest.raises(RunFolderBusy, match=r"in use by pid 4242 on host node-elsewhere \(SLURM job 777, array task "
                                            r"3\) since .*last heartbeat 5 s ago.*scancel 777"):
        RunLock(tmp_path).acquire()
    _foreign(tmp_path, age=STALE_AFTER_S + 10)
    lock = RunLock(tmp_path)
    lock.acquire()  # its heartbeat stopped: taken over
    try:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.record["token"]
    finally:
        lock.release()


def test_a_requeued_slurm_job_takes_over_its_earlier_start_at_once(tmp_path, monkeypatch):
    _foreign(tmp_path, age=5, slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    with hold_run_folder(tmp_path) as lock:
        assert json.loads((tmp_path / LOCK_FILE).read_text())["token"] == lock.record["token"]
    monkeypatch.setenv("SLURM_JOB_ID", "778")  # another job: the fresh lock holds
    _foreign(tmp_path, age=5, slurm_restart=0)
    with pytest.raises(RunFolderBusy, match="SLURM job 777"):
        RunLock(tmp_path).acquire()


def test_of_several_processes_racing_for_a_stale_lock_exactly_one_gets_it(tmp_path):
    folder, go = tmp_path / "run", tmp_path / "go"
    _foreign(folder, age=STALE_AFTER_S + 60)
    procs = [_holder(folder, go=str(go), hold=3) for _ in range(4)]
    time.sleep(1.0)  # all started and waiting
    go.touch()
    outs = [p.communicate(timeout=60) for p in procs]
    held = [i for i, p in enumerate(procs) if p.returncode == 0]
    assert len(held) == 1, [(p.returncode, o) for p, o in zip(procs, outs)]
    for i, (p, (out, err)) in enumerate(zip(procs, outs)):
        if i != held[0]:
            assert p.returncode == 3 and f"in use by pid {procs[held[0]].pid} on host" in out, out + err


def test_the_heartbeat_keeps_the_lock_fresh_and_a_holder_that_lost_it_stops(tmp_path):
    proc = _holder(tmp_path, heartbeat=0.2)
    try:
        _wait_held(proc)
        path = tmp_path / LOCK_FILE
        os.utime(path, (time.time() - 100, time.time() - 100))
        deadline = time.monotonic() + 20
        while time.time() - path.stat().st_mtime > 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert time.time() - path.stat().st_mtime < 50  # touched again
        path.write_text(json.dumps({**holder_record(None), "pid": 1}))  # someone else's now
        proc.wait(timeout=20)
        assert proc.returncode == -signal.SIGTERM
        assert "was taken over by pid 1" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_the_lock_is_reentrant_and_named_parts_do_not_exclude_each_other(tmp_path):
    with hold_run_folder(tmp_path):
        with hold_run_folder(tmp_path):  # a stage running another stage's `run` on its folder
            pass
        assert (tmp_path / LOCK_FILE).exists()
        with hold_run_folder(tmp_path, name="shard 0 of 2"), hold_run_folder(tmp_path, name="shard 1 of 2"):
            assert len(list(tmp_path.glob(".lock-shard*"))) == 2
    assert not list(tmp_path.glob(".lock*"))


@pytest.mark.slow
def test_two_training_processes_on_one_run_folder(tmp_path):
    """The real stage: a second identical command refuses while the first trains; after a SIGKILL the next start
    takes the lock over and resumes."""
    outputs = tmp_path / "outputs"
    make_dataset(outputs / "demo_data")
    codebook = make_codebook(outputs / "codebook.pt")
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(outputs), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "stages.train_transformer", "dataset=demo", "trainer=cpu", "logger=none",
           f"codebook.ckpt={codebook}", "transformer.feat_sample_size=1", "transformer.roll_columns=false",
           "trainer.val_every=0", "trainer.ckpt_every=2", "trainer.log_every=1"]
    run = outputs / "train_transformer" / "demo" / "transformer.feat_sample_size-1+transformer.roll_columns-false"
    first = subprocess.Popen([*cmd, "trainer.max_steps=100000"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last.pt").exists():
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.1)
        second = subprocess.run([*cmd, "trainer.max_steps=100000"], cwd=ROOT, env=env, capture_output=True,
                                text=True, timeout=240)
        assert second.returncode != 0
        assert f"run folder {run} is in use by pid {first.pid} on host {socket.gethostname()} since" \
            in second.stderr, second.stderr[-3000:]
        starts = json.loads((run / "run.json").read_text())["starts"]
        assert len(starts) == 1  # the refused process recorded no start
    finally:
        first.kill()
        first.wait()
    third = subprocess.run([*cmd, "trainer.max_steps=4"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=240)
    assert third.returncode == 0, third.stderr[-3000:]
    log = (run / "train_transformer.log").read_text()
    assert f"process {first.pid} on this host is gone" in log and "resumed from" in log
