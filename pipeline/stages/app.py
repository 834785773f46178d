"""`python -m stages.app`: the interactive sampler's page (`pipeline.app`) served until interrupted."""
from __future__ import annotations

from pathlib import Path

from pipeline.app import build_app, import_gradio, launch


def run(cfg, run_dir: str | Path | None = None) -> None:
    """Build the page and serve it on `server_name`:`port` until interrupted."""
    from pipeline.train.loop import run_folder

    run_dir = run_folder(run_dir)
    import_gradio()  # fail before loading any model
    launch(build_app(cfg, run_dir), cfg, run_dir)
