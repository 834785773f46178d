"""One logger facade for every training stage: metrics, spectrogram images, audio, tables.

W&B sits behind it (its mode from `logger.mode` or `WANDB_MODE`: online, offline or disabled); media are also
written under `<run>/media/` so they exist without any tracker. Only the main process logs. A resumed run
continues the same W&B run: its id is kept in `<run>/wandb_id.txt`.
"""
from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from pipeline.files.writes import atomic_write, save_bytes

log = logging.getLogger(__name__)


class Logger:
    """`log_metrics`, `log_image`, `log_audio`, `log_table`, `finish`; a no-op on non-main processes."""

    def __init__(self, cfg: Mapping[str, Any] | None, run_dir: str | os.PathLike, config: dict | None = None,
                 enabled: bool = True, name: str | None = None):
        cfg = dict(cfg or {})
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.media_every = int(cfg.get("media_every", 0) or 0)
        self._wandb = None
        self._run = None
        mode = os.environ.get("WANDB_MODE") or cfg.get("mode") or "offline"
        if not enabled or cfg.get("name", "none") != "wandb" or mode == "disabled":
            return
        import wandb

        id_file = self.run_dir / "wandb_id.txt"
        run_id = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
        if not id_file.exists():
            save_bytes(id_file, run_id.encode())
        self._wandb = wandb
        self._run = wandb.init(project=cfg.get("project", "specvqgan"), entity=cfg.get("entity"),
                               dir=str(self.run_dir), id=run_id, resume="allow", mode=mode,
                               name=name or self.run_dir.name, config=config, tags=list(cfg.get("tags") or []))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.enabled:
            return
        if self._run is not None:
            self._run.log(dict(metrics), step=step)

    def media_due(self, step: int) -> bool:
        return self.enabled and self.media_every > 0 and step % self.media_every == 0

    def log_image(self, key: str, image: np.ndarray, step: int, caption: str | None = None) -> Path | None:
        """Save a uint8 (H, W) or (H, W, 3) image as `<run>/media/<key>_<step>.png` and send it to W&B."""
        if not self.enabled:
            return None
        from PIL import Image

        path = self.run_dir / "media" / f"{key.replace('/', '_')}_{step:07d}.png"
        with atomic_write(path) as f:
            Image.fromarray(np.asarray(image)).save(f, format="PNG")
        if self._run is not None:
            self._run.log({key: self._wandb.Image(str(path), caption=caption)}, step=step)
        return path

    def log_audio(self, key: str, wave: np.ndarray, sample_rate: int, step: int) -> Path | None:
        """Save a mono waveform as `<run>/media/<key>_<step>.wav` and send it to W&B."""
        if not self.enabled:
            return None
        import soundfile as sf

        path = self.run_dir / "media" / f"{key.replace('/', '_')}_{step:07d}.wav"
        with atomic_write(path) as f:
            sf.write(f, np.asarray(wave, dtype=np.float32).reshape(-1), sample_rate, format="WAV")
        if self._run is not None:
            self._run.log({key: self._wandb.Audio(str(path), sample_rate=sample_rate)}, step=step)
        return path

    def log_table(self, key: str, columns: Sequence[str], rows: Sequence[Sequence[Any]],
                  step: int | None = None) -> None:
        if not self.enabled or self._run is None:
            return
        self._run.log({key: self._wandb.Table(columns=list(columns), data=[list(r) for r in rows])}, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
