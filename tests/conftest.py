"""Shared test fixtures: where the real reference data lies, and a scratch outputs folder."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SPECVQGAN_SHARED", ROOT.parent / "shared")).resolve()

torch.set_num_threads(1)  # `make test` runs 2 pytest workers on 2 cores: one thread each
os.environ.setdefault("WANDB_MODE", "disabled")


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


@pytest.fixture
def outputs(tmp_path: Path, monkeypatch) -> Path:
    """A scratch `paths.outputs` for stages run inside a test."""
    out = tmp_path / "outputs"
    out.mkdir()
    monkeypatch.setenv("SPECVQGAN_OUTPUTS", str(out))
    return out
