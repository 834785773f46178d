"""`stages.app`: a Gradio page in place of the original's Streamlit sampler (spec §9.1).

Upload a video (or pick a clip of the configured data set's split), choose the sampling settings, press
"Generate": the page shows each sample's sound, the video with the new sound and the spectrogram, and
optionally the codebook's reconstruction of the video's own sound. The work is the sample stage's
(`pipeline.sample_stage.sample_user_clip`: features, sampling, decoding, vocoding, muxing); this module only
loads the models once (`Sampler`) and lays out the page (`build_app`). Files go to
`<run>/requests/<n>_<stem>/`. gradio is imported only by `build_app` (`pip install -e .[app]`).
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.sample_stage import (
    UserModels,
    load_user_models,
    reconstruct_user_clip,
    sample_user_clip,
    sampling_settings,
)
from pipeline.train.logger import spectrogram_image

log = logging.getLogger(__name__)

INSTALL_HINT = "the app needs gradio: install it with `pip install -e .[app]`"


def import_gradio():
    """gradio, or an ImportError that names the `app` extra."""
    try:
        import gradio
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return gradio


def spectrogram_rgb(mel: np.ndarray, scale: int = 2) -> np.ndarray:
    """(80, T) mel in [0, 1] -> (80 * scale, T, 3) uint8 image, low frequencies at the bottom."""
    gray = np.repeat(spectrogram_image(mel, (0.0, 1.0)), scale, axis=0)  # (80 * scale, T)
    return np.stack([gray] * 3, axis=-1)


@dataclass
class Result:
    """What one press of "Generate" made: per sample a wave, a spectrogram image, a wav and (with a video) an mp4."""

    waves: list[np.ndarray]
    images: list[np.ndarray]
    wavs: list[Path]
    mp4s: list[Path | None]
    reconstruction: dict[str, Any] | None = None  # {"mel", "wave", "wav", "image"} of the video's own sound
    folder: Path | None = None


@dataclass
class Sampler:
    """The models, loaded once, and the function the page calls (usable without gradio)."""

    cfg: Any
    run_dir: Path
    models: UserModels | None = None
    _count: Any = field(default_factory=itertools.count)

    def __post_init__(self):
        self.run_dir = Path(self.run_dir)
        if self.models is None:
            self.models = load_user_models(self.cfg)
        self.defaults = sampling_settings(self.cfg, self.models.meta, int(self.models.args["vocab_size"]))

    # --- the data set's clips ------------------------------------------------------------------------------
    def clips(self) -> list[str]:
        """Clip ids of the configured split (`split`) whose video or features are on this machine ([] if none)."""
        from pipeline.data.layout import split_ids

        try:
            ids = split_ids(self.cfg.dataset, str(self.cfg.split))
        except (FileNotFoundError, KeyError) as error:
            log.warning("no data set clips to pick: %s", error)
            return []
        return [i for i in ids if any(p is not None and p.exists() for p in self.clip_inputs(i))]

    def clip_inputs(self, clip_id: str) -> tuple[Path | None, Path | None]:
        """(video, features file) of a data set clip; the features only for a single-stream features config."""
        from pipeline.data.layout import feature_path, layout_of
        from pipeline.extraction import video_path

        video = video_path(self.cfg.dataset.videos, clip_id, layout_of(self.cfg.dataset))
        folders = list((self.models.fcfg or {}).get("folders") or [])
        features = feature_path(self.cfg.dataset, str(folders[0]), clip_id) if len(folders) == 1 else None
        if features is not None and not features.exists():
            features = None
        return (video if video.exists() else None), features

    # --- one press of the button ---------------------------------------------------------------------------
    def generate(self, video: str | Path | None = None, clip_id: str | None = None, *, mode: str = "nopix",
                 temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, samples: int = 1,
                 max_seconds: float | None = 10.0, seed: int = 0, class_id: int | None = None,
                 reconstruct: bool = False) -> Result:
        """Samples for an uploaded `video` or a data set clip (`clip_id`): a clip's stored features are used
        when present (no feature network needed), else they are extracted from its video."""
        features = None
        if video:
            video = Path(video)
        elif clip_id:
            video, features = self.clip_inputs(clip_id)
            if video is None and features is None:
                raise FileNotFoundError(f"clip {clip_id}: neither its video nor its features are on this machine")
        elif self.models.condition == "features":
            raise ValueError("upload a video or pick a clip of the data set")
        if reconstruct and video is None:
            raise ValueError("the codebook reconstruction needs the clip's video (its own sound)")
        settings = {"mode": str(mode), "temperature": float(temperature),
                    "top_k": int(top_k) if top_k else None, "top_p": float(top_p) if top_p and top_p < 1 else None}
        stem = Path(video).stem if video is not None else (clip_id or "sample").split("/")[-1]
        folder = self.run_dir / "requests" / f"{next(self._count):04d}_{stem}"
        outs = [folder / f"{stem}_sample_{k}" for k in range(max(1, int(samples)))]
        made = sample_user_clip(self.models, video, outs, settings, seed=int(seed), max_seconds=max_seconds,
                                features=features, class_id=class_id)
        recon = None
        if reconstruct:
            recon = reconstruct_user_clip(self.models, video, folder / f"{stem}_reconstruction")
            recon["image"] = spectrogram_rgb(recon["mel"])
        return Result(waves=[m["wave"] for m in made], images=[spectrogram_rgb(m["mel"]) for m in made],
                      wavs=[m["wav"] for m in made], mp4s=[m["mp4"] for m in made], reconstruction=recon,
                      folder=folder)


# ------------------------------------------------------------------------------------------------ the page
def build_app(cfg, run_dir: str | Path, sampler: Sampler | None = None):
    """The Gradio Blocks of the sampler (the models are loaded here, once, unless `sampler` is given)."""
    gr = import_gradio()
    sampler = sampler or Sampler(cfg, Path(run_dir))
    slots = int(cfg.max_samples)
    clips = sampler.clips()
    d = sampler.defaults
    with gr.Blocks(title="SpecVQGAN sampler") as app:
        gr.Markdown(f"## SpecVQGAN: sound for a video\nmodel `{cfg.transformer_ckpt}`; vocoder "
                    f"`{cfg.get('vocoder_ckpt') or 'Griffin-Lim'}`")
        with gr.Row():
            with gr.Column():
                video = gr.Video(label="your video", sources=["upload"])
                clip = gr.Dropdown(choices=clips, value=None, label=f"or a clip of {cfg.dataset.name} / {cfg.split}",
                                   visible=bool(clips))
                class_id = gr.Number(value=0, precision=0, label="class id (class-conditioned model)",
                                     visible=sampler.models.condition == "class")
            with gr.Column():
                mode = gr.Radio(["nopix", "half"], value=d["mode"], label="mode (half: primed with the video's sound)")
                temperature = gr.Slider(0.1, 2.0, value=d["temperature"], step=0.05, label="temperature")
                top_k = gr.Number(value=d["top_k"] or 0, precision=0, label="top-k (0: off)")
                top_p = gr.Slider(0.0, 1.0, value=d["top_p"] or 1.0, step=0.01, label="top-p (1: off)")
                samples = gr.Slider(1, slots, value=1, step=1, label="number of samples")
                seconds = gr.Slider(1, 60, value=float(cfg.max_seconds or 10), step=0.5,
                                    label="seconds to generate (past 9.85 s: sliding window)")
                whole = gr.Checkbox(False, label="the whole video (sliding window)")
                seed = gr.Number(value=int(cfg.seed), precision=0, label="seed")
                recon = gr.Checkbox(False, label="also the codebook reconstruction of the video's own sound")
                button = gr.Button("Generate", variant="primary")
        status = gr.Markdown()
        outputs = []
        for k in range(slots):
            with gr.Row(visible=False) as row:
                outputs += [row, gr.Audio(label=f"sample {k}", type="filepath"), gr.Video(label=f"sample {k} video"),
                            gr.Image(label=f"sample {k} spectrogram")]
        with gr.Row(visible=False) as recon_row:
            recon_outputs = [recon_row, gr.Audio(label="codebook reconstruction", type="filepath"),
                             gr.Image(label="reconstruction spectrogram")]

        def on_click(video, clip, mode, temperature, top_k, top_p, samples, seconds, whole, seed, recon, class_id):
            try:
                result = sampler.generate(video, clip, mode=mode, temperature=temperature, top_k=top_k, top_p=top_p,
                                          samples=samples, max_seconds=None if whole else seconds, seed=seed,
                                          class_id=None if class_id is None else int(class_id), reconstruct=recon)
            except (ValueError, FileNotFoundError, RuntimeError) as error:  # ClipError is a RuntimeError
                raise gr.Error(str(error)) from error
            values = []
            for k in range(slots):
                if k < len(result.waves):
                    mp4 = result.mp4s[k]
                    values += [gr.update(visible=True), str(result.wavs[k]),
                               gr.update(value=str(mp4) if mp4 else None, visible=mp4 is not None),
                               result.images[k]]
                else:
                    values += [gr.update(visible=False), None, None, None]
            r = result.reconstruction
            values += [gr.update(visible=r is not None), str(r["wav"]) if r else None, r["image"] if r else None]
            return [f"written to `{result.folder}`", *values]

        button.click(on_click, [video, clip, mode, temperature, top_k, top_p, samples, seconds, whole, seed, recon,
                                class_id], [status, *outputs, *recon_outputs])
    return app


def run(cfg, run_dir: str | Path | None = None) -> None:
    """Build the page and serve it on `server_name`:`port` until interrupted."""
    if run_dir is None:
        from hydra.core.hydra_config import HydraConfig

        run_dir = HydraConfig.get().runtime.output_dir
    import_gradio()  # fail before loading any model
    app = build_app(cfg, run_dir)
    app.queue().launch(server_name=str(cfg.server_name), server_port=int(cfg.port), share=False,
                       allowed_paths=[str(Path(run_dir).resolve())])
