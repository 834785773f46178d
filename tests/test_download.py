"""Downloads against a real HTTP server on 127.0.0.1 serving archives in the original's released layout
(tests/zoo_server.py): a good archive, a wrong md5, a transfer cut off and resumed with Range, a 404, archives
with a `../` member, a symlink out, an absolute name and a device file; a second run downloads nothing; and
`stages.download` itself through its Hydra entry point."""
from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from pipeline.checkpoints.fetch import ChecksumError, DownloadError, UnsafeArchiveError, fetch
from pipeline.checkpoints.zoo import Zoo, ZooError
from tests.helpers import ROOT
from tests.zoo_server import SHARED_RELEASED, FileServer, tar_gz, tar_with

CODEBOOK_RUN = "2021-01-01T00-00-00_vas_codebook"


@pytest.fixture
def server():
    srv = FileServer().start()
    yield srv
    srv.stop()


def _zoo(server: FileServer, tmp_path: Path, models: dict) -> Zoo:
    return Zoo({"hosts": {"a3s": server.url}, "models": models}, models=tmp_path / "models",
               data=tmp_path / "data")


@pytest.fixture
def codebook(server, tmp_path):
    """The released-layout codebook folder served as the release names it; (zoo, entry name, archive bytes)."""
    body = tar_gz(SHARED_RELEASED / CODEBOOK_RUN)
    md5 = server.add(f"models/{CODEBOOK_RUN}.tar.gz", body)
    zoo = _zoo(server, tmp_path, {"fixture_codebook": {"kind": "codebook", "about": "the small codebook",
                                                       "file": f"models/{CODEBOOK_RUN}.tar.gz", "md5": md5}})
    return zoo, "fixture_codebook", body


def test_good_archive_unpacks_as_released_and_a_second_run_downloads_nothing(codebook, server, tmp_path):
    zoo, name, body = codebook
    path, worked = zoo.install(zoo.get(name), progress=False)
    assert worked and path == tmp_path / "models" / CODEBOOK_RUN
    for rel in ("checkpoints/epoch_000.ckpt", "configs/2021-01-01T00-00-00-project.yaml"):
        assert (path / rel).read_bytes() == (SHARED_RELEASED / CODEBOOK_RUN / rel).read_bytes()
    assert not list((tmp_path / "models").glob(".unpack-*"))            # the temporary folder is gone
    assert not list((tmp_path / "models" / ".downloads").iterdir())     # the archive too (keep_archives=False)
    assert len(server.requests) == 1 and server.requests[0].sent == len(body)

    assert zoo.install(zoo.get(name), progress=False) == (path, False)
    assert zoo.resolve(name) == path
    assert len(server.requests) == 1                                   # nothing fetched again


def test_wrong_md5_is_refused_and_deleted(server, tmp_path):
    body = tar_gz(SHARED_RELEASED / CODEBOOK_RUN)
    server.add(f"models/{CODEBOOK_RUN}.tar.gz", body)
    zoo = _zoo(server, tmp_path, {"bad": {"kind": "codebook", "file": f"models/{CODEBOOK_RUN}.tar.gz",
                                          "md5": "0" * 32}})
    with pytest.raises(ChecksumError, match=rf"{CODEBOOK_RUN}.tar.gz .*md5 [0-9a-f]{{32}} differs from the "
                                            rf"published {'0' * 32}; the file was deleted"):
        zoo.install(zoo.get("bad"), progress=False)
    models = tmp_path / "models"
    assert not (models / CODEBOOK_RUN).exists() and not zoo.installed(zoo.get("bad"))
    left = [p.name for p in models.rglob("*") if p.is_file() and ".zoo" not in p.parts]  # (.zoo: the lock)
    assert left == [] and not (models / ".zoo" / "bad.json").exists()  # neither the file nor a .part is left


def test_a_cut_transfer_resumes_with_range_without_sending_bytes_twice(codebook, server):
    zoo, name, body = codebook
    server.cut_once.add(f"models/{CODEBOOK_RUN}.tar.gz")
    path, worked = zoo.install(zoo.get(name), progress=False)
    assert worked and (path / "checkpoints" / "epoch_000.ckpt").is_file()
    first, second = server.requests
    assert first.range is None and first.status == 200 and 0 < first.sent < len(body)
    assert second.range == f"bytes={first.sent}-" and second.status == 206
    assert first.sent + second.sent == len(body)                       # not a byte sent twice


def test_an_interrupted_run_keeps_the_part_and_the_next_run_resumes(codebook, server, tmp_path):
    zoo, name, body = codebook
    path = f"models/{CODEBOOK_RUN}.tar.gz"
    server.cut_once.add(path)
    server.serve_once.add(path)  # the server goes away after half the file
    with pytest.raises(DownloadError, match="HTTP 404"):
        zoo.install(zoo.get(name), progress=False, retries=0)
    part = tmp_path / "models" / ".downloads" / f"{CODEBOOK_RUN}.tar.gz.part"
    assert part.stat().st_size == server.requests[0].sent
    server.add(path, body)  # back
    zoo.install(zoo.get(name), progress=False, retries=0)
    assert server.requests[-1].range == f"bytes={server.requests[0].sent}-"
    assert sum(r.sent for r in server.requests) == len(body) and not part.exists()


def test_a_link_that_resets_within_every_read_keeps_each_byte_and_completes(server, tmp_path):
    """A connection reset every 300 kB (within one of the old 1 MB reads, which threw the read away, so the file
    never progressed): every byte received is kept, and the transfer resumes at once after each reset."""
    body = os.urandom(3 << 20)
    md5 = server.add("models/weights.pt", body)
    server.reset_every["models/weights.pt"] = 300_000
    zoo = _zoo(server, tmp_path, {"weights": {"kind": "vocoder", "file": "models/weights.pt", "md5": md5}})
    path, worked = zoo.install(zoo.get("weights"), progress=False, retries=1)
    assert worked and path.read_bytes() == body
    assert len(server.requests) >= len(body) // 300_000 and all(r.sent <= 300_000 for r in server.requests)
    assert server.requests[1].range is not None and int(server.requests[1].range[6:-1]) > 0  # resumed, not redone


def test_a_trickling_server_is_broken_off_and_the_bytes_kept(server, tmp_path):
    """A server sending a byte every 20 ms never trips a per-read timeout; an attempt that receives less than
    64 KiB in `timeout` seconds is broken off, retried after a back-off, and the run gives up keeping the bytes."""
    import time

    server.add("models/slow.pt", os.urandom(1 << 20))
    server.trickle["models/slow.pt"] = 0.02
    dest = tmp_path / "slow.pt"
    tic = time.monotonic()
    with pytest.raises(DownloadError, match=r"Stalled \(stalled: less than 64 KiB in 0.5 s\) after 2 attempts"):
        fetch(f"{server.url}/models/slow.pt", dest, None, timeout=0.5, retries=1, progress=False, backoff=0.1)
    assert time.monotonic() - tic < 10
    part = dest.with_name("slow.pt.part")
    assert 0 < part.stat().st_size < 1 << 16 and not dest.exists()  # what came is kept for the next run


def test_without_an_md5_the_registry_size_decides(server, tmp_path):
    """MelGAN's files have no published md5: a file that arrives short but looks complete (its Content-Length says
    so) is resumed to the registry's size, one of another size is deleted, and without a size nothing is fetched."""
    body = os.urandom(200_000)
    server.add("vocoder/best_netG.pt", body)
    server.short_once.add("vocoder/best_netG.pt")
    zoo = _zoo(server, tmp_path, {"sized": {"kind": "vocoder", "file": "vocoder/best_netG.pt", "md5": None,
                                            "size": len(body)},
                                  "wrong": {"kind": "vocoder", "file": "vocoder/best_netG.pt", "md5": None,
                                            "size": len(body) - 1},
                                  "unknown": {"kind": "vocoder", "file": "vocoder/best_netG.pt", "md5": None}})
    path, worked = zoo.install(zoo.get("sized"), progress=False)
    assert worked and path.read_bytes() == body and server.requests[1].range == f"bytes={len(body) // 2}-"
    assert zoo.record(zoo.get("sized"))["md5"]["vocoder/best_netG.pt"] == __import__("hashlib").md5(body).hexdigest()
    with pytest.raises(ChecksumError, match=rf"best_netG.pt .*{len(body)} bytes, the registry records {len(body) - 1}"):
        zoo.install(zoo.get("wrong"), progress=False)
    assert not zoo.installed(zoo.get("wrong"))
    asked = len(server.requests)
    with pytest.raises(ZooError, match=r"unknown: no published md5 and no size .*could not be verified"):
        zoo.install(zoo.get("unknown"), progress=False)
    assert len(server.requests) == asked and not zoo.installed(zoo.get("unknown"))


def test_without_md5_or_size_a_file_is_installed_only_when_it_reads_whole(server, tmp_path):
    """`verify: readable` (the released MelGAN's entries, whose md5 and size nobody published): a torch file and its
    args.yml that read whole are installed and their md5s pinned; a torch file cut short that the server calls
    complete is refused and deleted, and nothing is installed."""
    import hashlib

    netg = (SHARED_RELEASED.parent / "melgan_netG_small.pt").read_bytes()
    args = b"n_mel_channels: 80\nngf: 32\nn_residual_layers: 3\n"
    server.add("vocoder/logs/best_netG.pt", netg)
    server.add("vocoder/logs/args.yml", args)
    server.add("cut/best_netG.pt", netg[: len(netg) * 2 // 3])
    server.add("cut/args.yml", args)
    zoo = _zoo(server, tmp_path, {
        "whole": {"kind": "vocoder", "files": ["vocoder/logs/best_netG.pt", "vocoder/logs/args.yml"], "md5": None,
                  "verify": "readable"},
        "cut": {"kind": "vocoder", "files": ["cut/best_netG.pt", "cut/args.yml"], "md5": None, "verify": "readable"}})
    path, worked = zoo.install(zoo.get("whole"), progress=False)
    assert worked and (path / "best_netG.pt").read_bytes() == netg
    assert zoo.record(zoo.get("whole"))["md5"]["vocoder/logs/best_netG.pt"] == hashlib.md5(netg).hexdigest()
    with pytest.raises(ChecksumError, match=r"cut: .*best_netG.pt is not a whole torch file.*deleted"):
        zoo.install(zoo.get("cut"), progress=False)
    assert not zoo.installed(zoo.get("cut")) and not list((tmp_path / "models").rglob("cut*best_netG.pt*"))


def test_a_failed_download_leaves_no_empty_part(server, tmp_path):
    server.add("models/x.pt", b"x" * 1000)
    server.reset_every["models/x.pt"] = 0  # headers, then a reset: not a byte
    dest = tmp_path / "x.pt"
    with pytest.raises(DownloadError, match="after 2 attempts"):
        fetch(f"{server.url}/models/x.pt", dest, None, retries=1, progress=False, backoff=0.01)
    assert list(tmp_path.iterdir()) == []


def test_processes_resolving_the_same_name_download_it_once(codebook, server):
    from concurrent.futures import ThreadPoolExecutor

    zoo, name, _ = codebook
    with ThreadPoolExecutor(3) as pool:  # as the processes of `accelerate launch` resolving the same model
        paths = list(pool.map(lambda _: zoo.resolve(name), range(3)))
    assert len(set(paths)) == 1 and (paths[0] / "checkpoints" / "epoch_000.ckpt").is_file()
    assert len(server.requests) == 1


def test_404_names_the_url(server, tmp_path):
    dest = tmp_path / "x.tar.gz"
    with pytest.raises(DownloadError, match=rf"{server.url}/models/missing.tar.gz: HTTP 404 Not Found"):
        fetch(f"{server.url}/models/missing.tar.gz", dest, None, progress=False)
    assert not dest.exists() and not dest.with_name("x.tar.gz.part").exists()


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    return info


@pytest.mark.parametrize("members, reason", [
    ([(_member("run/ok.txt"), b"fine"), (_member("run/../../escaped.txt"), b"evil")], "outside the destination"),
    ([(_member("run/ok.txt"), b"fine"), (_member("run/link", tarfile.SYMTYPE, "../../escaped.txt"), None)],
     "outside the destination"),
    ([(_member("run/abs", tarfile.SYMTYPE, "/etc/passwd"), None)], "absolute"),
    ([(_member("/abs.txt"), b"evil")], "absolute"),
    ([(_member("run/dev", tarfile.CHRTYPE), None)], "special file"),
], ids=["dotdot", "symlink_out", "absolute_link", "absolute_name", "device"])
def test_unsafe_archives_are_refused_and_nothing_is_written(server, tmp_path, members, reason):
    md5 = server.add("models/run.tar.gz", tar_with(members))
    zoo = _zoo(server, tmp_path, {"evil": {"kind": "codebook", "file": "models/run.tar.gz", "md5": md5}})
    with pytest.raises(UnsafeArchiveError, match=rf"run.tar.gz: member .* refused \(.*{reason}.*\); nothing was "
                                                 rf"unpacked"):
        zoo.install(zoo.get("evil"), progress=False)
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "abs.txt").exists()
    models = tmp_path / "models"
    assert not (models / "run").exists() and not list(models.glob(".unpack-*")) and not zoo.installed(zoo.get("evil"))


def test_resolve_paths_names_and_the_offline_message(codebook, tmp_path):
    zoo, name, _ = codebook
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert zoo.resolve(local) == local                                 # a local file as is
    assert zoo.resolve(tmp_path / "not_there.pt") == tmp_path / "not_there.pt"  # a path: the caller reports it
    with pytest.raises(ZooError, match=r"did you mean fixture_codebook"):
        zoo.resolve("fixture_codebok")
    with pytest.raises(ZooError, match=rf"{name} is not downloaded .*run `python -m stages.download what={name}`"):
        zoo.resolve(name, fetch=False)
    dead = Zoo({"hosts": {"a3s": "http://127.0.0.1:9"}, "models": {name: {"kind": "codebook", "file": "m.tar.gz",
                                                                         "md5": "0" * 32}}}, models=tmp_path / "m2")
    with pytest.raises(ZooError, match=rf"could not fetch {name}: .*\n  Run `python -m stages.download what={name}`"):
        dead.resolve(name)


def test_expand_names_groups_and_patterns(tmp_path):
    zoo = Zoo(models=tmp_path / "models")
    assert [e.name for e in zoo.expand("vas_codebook,melception")] == ["vas_codebook", "melception"]
    assert len(zoo.expand("vas_bn")) == 24 and len(zoo.expand("vggsound_0*_mels")) == 9
    assert {e.name for e in zoo.expand("codebooks")} == {"vas_codebook", "vggsound_codebook"}
    with pytest.raises(ZooError, match="did you mean vas_codebook"):
        zoo.expand("vas_codebok")


def _stage(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SPECVQGAN_OUTPUTS": str(tmp_path / "outputs"), "SPECVQGAN_MODELS": str(tmp_path / "models"),
           "WANDB_MODE": "disabled"}
    return subprocess.run([sys.executable, "-m", "stages.download", "logger=none", "progress=false", *overrides],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.slow
def test_the_stage_fetches_lists_and_fails_clearly(codebook, server, tmp_path):
    zoo, name, _ = codebook
    registry = tmp_path / "registry.yaml"
    registry.write_text(yaml.safe_dump({"hosts": {"a3s": "http://unused.invalid"},
                                        "models": {name: {"kind": "codebook", "about": "the small codebook",
                                                          "file": f"models/{CODEBOOK_RUN}.tar.gz",
                                                          "md5": zoo.get(name).md5[f"models/{CODEBOOK_RUN}.tar.gz"]},
                                                   "gone": {"kind": "codebook", "file": "models/gone.tar.gz",
                                                            "md5": "1" * 32}}}))
    common = (f"zoo.registry={registry}", f"+zoo.mirrors.a3s={server.url}")
    first = _stage(tmp_path, f"what={name}", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{name}: installed -> {tmp_path / 'models' / CODEBOOK_RUN}" in first.stdout
    again = _stage(tmp_path, f"what={name}", *common)
    assert again.returncode == 0 and f"skipped (already there): {name}" in again.stdout and len(server.requests) == 1
    listing = _stage(tmp_path, "what=list", *common)
    assert listing.returncode == 0 and name in listing.stdout and "yes" in listing.stdout
    missing = _stage(tmp_path, f"what=[{name},gone]", *common)
    assert missing.returncode != 0
    assert f"gone: DownloadError: {server.url}/models/gone.tar.gz: HTTP 404 Not Found" in missing.stderr
