"""Shared test fixtures: where the real reference data lies, and a scratch outputs folder."""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from tests.helpers import SHARED

# before any test runs: an OpenMP pool of 2 made before accelerate.debug_launcher forks deadlocks its children
torch.set_num_threads(1)
os.environ.setdefault("WANDB_MODE", "disabled")
# released models by name never land in the checkout; a test that fetches one points at its own local server
if "SPECVQGAN_MODELS" not in os.environ:
    os.environ["SPECVQGAN_MODELS"] = tempfile.mkdtemp(prefix="specvqgan-test-models-")
    atexit.register(shutil.rmtree, os.environ["SPECVQGAN_MODELS"], True)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: `make test` runs 2 pytest workers on 2 cores, and a second thread only adds
    synchronisation (several times slower, up to 35x, when the cores are busy). Restored after each test, so a
    stage that sets its own thread count cannot leak it into the next test."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _require(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"reference data {path} is missing: tests read ../shared beside the project "
                    f"(or SPECVQGAN_SHARED)")
    return path


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    return _require(SHARED)


@pytest.fixture(scope="session")
def vas_dir() -> Path:
    """Real VAS clips with what the original pipeline made of them (../shared/data/vas)."""
    return _require(SHARED / "data" / "vas")


@pytest.fixture(scope="session")
def original_fixtures() -> Path:
    """Small checkpoints made by the original code, with their inputs and outputs."""
    return _require(SHARED / "fixtures" / "original")


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster with accounting (tests/slurm_cluster.py), started once and stopped by pid.
    Its tests live in tests/test_slurm.py, which `make test` (--dist loadfile) runs in one worker. Skips, saying
    why, where the Debian packages or root are missing."""
    from tests.slurm_cluster import SlurmCluster, unavailable

    reason = unavailable()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    atexit.register(cluster.stop)  # also after Ctrl-C, which skips fixture teardown
    yield cluster.start()
    cluster.stop()


@pytest.fixture
def compose():
    """`compose(config_name, *overrides)`: a stage's config as its `python -m stages.NAME` composes it
    (tests/helpers.py)."""
    from tests.helpers import compose

    return compose


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch) -> Path:
    """A scratch `paths.outputs` for stages run inside a test."""
    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setenv("SPECVQGAN_OUTPUTS", str(out))
    return out


@pytest.fixture(scope="module")
def original_transformer_small(original_fixtures):
    """The original's small GPTFeats checkpoint: (state_dict, io tensors, config_small.json)."""
    import json

    ckpt = torch.load(original_fixtures / "transformer_small.ckpt", weights_only=True)["state_dict"]
    io = torch.load(original_fixtures / "transformer_small_io.pt", weights_only=True)
    cfg = json.loads((original_fixtures / "config_small.json").read_text())
    return ckpt, io, cfg
