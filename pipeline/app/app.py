"""The app's Gradio page in place of the original's Streamlit sampler (spec §9.1).

Tab "sampler": upload a video (or pick a clip of the configured data set's split), choose the sampling settings,
press "Generate": the spectrogram fills in while the tokens are sampled (every `preview_columns` code columns
the tokens so far are decoded, the columns not yet sampled left dark), then each sample's sound, the video with
the new sound, its spectrogram, the last step's attention over the condition frames (the GPT's last layer,
mean over heads, `pipeline.generate.sampling.last_step_attention`) and, with `classifier.ckpt`, Melception's top-5
classes for the generated sound; optionally the codebook's reconstruction of the video's own sound.
Tab "codec": any audio file through the transformer's codebook and back (`pipeline.codec.transcode.round_trip_file`),
with bitrate, compression ratio, mel L1 and SNR.

Sampling follows the sample stage (`pipeline.generate.user_clip.sample_user_clip`: same condition, seeds, lengths and
files; a test holds the two equal) but one token at a time (`pipeline.generate.sampling.sample_steps`), so the page can
show progress. Files go to `<run>/requests/<n>_<stem>/`. Errors reach the page and API clients as gr.Error with
their reason. gradio is imported only by `build_app` (`pip install -e .[app]`).
"""
from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.build.classifier import load_melception
from pipeline.checkpoints.zoo import resolve
from pipeline.codec.transcode import codebook_identity, round_trip_file
from pipeline.data.layout import feature_path, layout_of, split_ids, video_path
from pipeline.generate.loading import load_user_models, sampling_settings
from pipeline.generate.sampling import last_step_attention, sample_steps
from pipeline.generate.settings import SamplingSettings
from pipeline.generate.user_clip import (
    UserModels,
    prepare_user_clip,
    reconstruct_user_clip,
    sample_generator,
    sound_span,
    video_seconds,
    write_user_sample,
)
from pipeline.media.images import spectrogram_image
from pipeline.media.mel import FRAMES_PER_COLUMN, unit_mel
from pipeline.runs.folders import run_folder

log = logging.getLogger(__name__)

INSTALL_HINT = "the app needs gradio: install it with `pip install -e .[app]`"


def import_gradio():
    """gradio, or an ImportError that names the `app` extra. Its usage analytics stay off unless
    GRADIO_ANALYTICS_ENABLED says otherwise (the page is served on loopback, often on machines without internet)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return gradio


def spectrogram_rgb(mel: np.ndarray, scale: int = 2) -> np.ndarray:
    """(80, T) mel in [0, 1] -> (80 * scale, T, 3) uint8 image, low frequencies at the bottom."""
    gray = np.repeat(spectrogram_image(mel, (0.0, 1.0)), scale, axis=0)  # (80 * scale, T)
    return np.stack([gray] * 3, axis=-1)


def attention_image(weights: np.ndarray, height: int = 64, bar: int = 6) -> np.ndarray:
    """(S,) attention weights -> (height, S * bar, 3) uint8 bar chart (bars scaled to the largest weight)."""
    weights = np.asarray(weights, dtype=np.float64).reshape(-1)
    top = weights.max() if weights.size and weights.max() > 0 else 1.0
    filled = np.round(weights / top * (height - 1)).astype(int)  # pixels per bar
    rows = np.arange(height)[::-1, None]  # bottom row is 0
    mask = np.repeat(rows < filled[None, :], bar, axis=1)  # (height, S * bar)
    image = np.full((height, mask.shape[1], 3), 255, np.uint8)
    image[mask] = (230, 120, 20)
    image[:, ::bar] = np.where(mask[:, ::bar, None], (150, 70, 10), (235, 235, 235))  # bar separators
    return image


@dataclass
class Progress:
    """One streamed update: sample `sample` has `done` of `total` tokens; `image` its spectrogram so far."""

    sample: int
    done: int
    total: int
    image: np.ndarray


@dataclass
class Result:
    """What one press of "Generate" made: per sample a wave, a spectrogram image, a wav, (with a video) an mp4,
    the last step's attention over the condition and (with a classifier) the top-5 classes."""

    waves: list[np.ndarray]
    images: list[np.ndarray]
    wavs: list[Path]
    mp4s: list[Path | None]
    reconstruction: dict[str, Any] | None = None  # {"mel", "wave", "wav", "image"} of the video's own sound
    folder: Path | None = None
    mels: list[np.ndarray] = field(default_factory=list)
    attention: list[np.ndarray] = field(default_factory=list)  # per sample (S,) weights
    top5: list[dict[str, float] | None] = field(default_factory=list)  # per sample {class name: probability}


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
        self.defaults = sampling_settings(self.cfg, self.models.meta)
        self.classifier = self._load_classifier()
        self._codebook_identity = None

    def _load_classifier(self):
        """(Melception, Normalize, class names) of `classifier.ckpt`, or None without one."""
        ckpt = self.cfg.classifier.ckpt
        if not ckpt:
            return None

        stats = resolve(self.cfg.classifier.stats, cfg=self.cfg)
        model, normalize, classes = load_melception(str(resolve(ckpt, cfg=self.cfg)),
                                                    None if stats is None else str(stats), self.models.device)
        n = model.fc.out_features
        if classes is None:
            names = list((self.cfg.get("dataset") or {}).get("classes") or [])
            classes = names if len(names) == n else [f"class {i}" for i in range(n)]
        return model.eval(), normalize, list(classes)

    @torch.no_grad()
    def top_classes(self, mel: np.ndarray, k: int = 5) -> dict[str, float] | None:
        """Melception's k most probable classes {name: probability} for a (80, T) [0, 1] mel (None without one)."""
        if self.classifier is None:
            return None
        model, normalize, classes = self.classifier
        x = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None].to(self.models.device)
        probs = torch.softmax(model(normalize(x, zero_one=True)).float(), dim=-1)[0].cpu()
        values, order = probs.topk(min(k, probs.numel()))
        return {classes[int(i)]: float(v) for v, i in zip(values, order)}

    # --- the data set's clips ------------------------------------------------------------------------------
    def clips(self) -> list[str]:
        """Clip ids of the configured split (`split`) whose video or features are on this machine ([] if none)."""

        try:
            ids = split_ids(self.cfg.dataset, str(self.cfg.split))
        except (FileNotFoundError, KeyError) as error:
            log.warning("no data set clips to pick: %s", error)
            return []
        return [i for i in ids if any(p is not None and p.exists() for p in self.clip_inputs(i))]

    def clip_inputs(self, clip_id: str) -> tuple[Path | None, Path | None]:
        """(video, features file) of a data set clip; the features only for a single-stream features config."""

        video = video_path(self.cfg.dataset.videos, clip_id, layout_of(self.cfg.dataset))
        folders = list((self.models.fcfg or {}).get("folders") or [])
        features = feature_path(self.cfg.dataset, str(folders[0]), clip_id) if len(folders) == 1 else None
        if features is not None and not features.exists():
            features = None
        return (video if video.exists() else None), features

    # --- one press of the button ---------------------------------------------------------------------------
    def generate(self, video: str | Path | None = None, clip_id: str | None = None, **settings) -> Result:
        """`stream` to its end: the Result alone."""
        for item in self.stream(video, clip_id, **settings):
            pass
        return item

    def stream(self, video: str | Path | None = None, clip_id: str | None = None, *, mode: str = "nopix",
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None, samples: int = 1,
               max_seconds: float | None = 10.0, seed: int = 0, class_id: int | None = None,
               reconstruct: bool = False, preview_columns: int | None = None) -> Iterator[Progress | Result]:
        """Samples for an uploaded `video` or a data set clip (`clip_id`): a clip's stored features are used
        when present (no feature network needed), else they are extracted from its video. Yields a `Progress`
        every `preview_columns` code columns of each sample (default: the config's) and the `Result` last."""

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
        settings = SamplingSettings(str(mode), float(temperature), int(top_k) if top_k else None,
                                    float(top_p) if top_p and top_p < 1 else None)  # the page: 0 / 1 mean off
        every = max(1, int(preview_columns or self.cfg.get("preview_columns") or 8))
        stem = Path(video).stem if video is not None else (clip_id or "sample").split("/")[-1]
        folder = self.run_dir / "requests" / f"{next(self._count):04d}_{stem}"
        model = self.models.model
        # as generation.sample_user_clip: the same condition, length, priming, seeds and files
        span = sound_span(video_seconds(video) if video is not None else None, max_seconds)
        clip = prepare_user_clip(self.models, video, settings, span, seed=int(seed), features=features,
                                 class_id=class_id)
        H, total = clip.rows, clip.num_tokens
        result = Result([], [], [], [], folder=folder)
        for k in range(max(1, int(samples))):
            shown = None  # the columns of the last preview
            for done, tokens in sample_steps(model, clip.cond, num_tokens=total, **settings.options(),
                                             gt_tokens=clip.gt, generator=sample_generator(self.models, seed, k)):
                if shown is None or done // H - shown >= every or done == total:
                    shown = done // H
                    yield Progress(k, done, total, spectrogram_rgb(self._partial_mel(tokens, done)))
            mel = unit_mel(model.decode_to_spec(tokens)[:, 0].float()).cpu()[0].numpy()  # (80, 16 cols)
            written = write_user_sample(self.models, folder / f"{stem}_sample_{k}", mel, video, span)
            result.waves.append(written["wave"])
            result.mels.append(mel)
            result.images.append(spectrogram_rgb(mel))
            result.wavs.append(written["wav"])
            result.mp4s.append(written["mp4"])
            result.attention.append(last_step_attention(model, clip.cond, tokens)[0].cpu().numpy())
            result.top5.append(self.top_classes(mel))
        if reconstruct:
            result.reconstruction = reconstruct_user_clip(self.models, video, folder / f"{stem}_reconstruction")
            result.reconstruction["image"] = spectrogram_rgb(result.reconstruction["mel"])
        yield result

    @torch.no_grad()
    def _partial_mel(self, tokens: torch.Tensor, done: int) -> np.ndarray:
        """The (80, 16 cols) mel of the tokens sampled so far; the columns not yet sampled are left at 0 (dark)."""
        model = self.models.model
        mel = unit_mel(model.decode_to_spec(tokens.clone())[0, 0].float()).clamp(0, 1).cpu().numpy()
        mel[:, (done // model.first_stage_permuter.H) * FRAMES_PER_COLUMN:] = 0
        return mel

    # --- the codec tab -------------------------------------------------------------------------------------
    def codec_round_trip(self, audio: str | Path):
        """Any audio file through the transformer's codebook and the vocoder: `pipeline.codec.transcode.Report`."""

        if not audio:
            raise ValueError("upload an audio file for the codec")
        codebook = self.models.model.first_stage_model
        if self._codebook_identity is None:
            self._codebook_identity = codebook_identity(codebook)
        out = self.run_dir / "codec" / f"{next(self._count):04d}_{Path(audio).stem}"
        return round_trip_file(codebook, audio, out, self.models.vocode, identity=self._codebook_identity)


# ------------------------------------------------------------------------------------------------ the page
def page_error(gr, error: Exception):
    """A gr.Error carrying the reason, for the page and API clients (gradio hides other exceptions' text)."""
    if isinstance(error, gr.Error):
        return error
    expected = isinstance(error, (ValueError, FileNotFoundError, RuntimeError))  # ClipError is a RuntimeError
    if not expected:
        log.exception("the app failed")
    return gr.Error(str(error) if expected else f"{type(error).__name__}: {error}")


def build_app(cfg, run_dir: str | Path, sampler: Sampler | None = None):
    """The Gradio Blocks of the sampler (the models are loaded here, once, unless `sampler` is given)."""
    gr = import_gradio()
    sampler = sampler or Sampler(cfg, Path(run_dir))
    slots = int(cfg.max_samples)
    clips = sampler.clips()
    d = sampler.defaults
    with gr.Blocks(title="SpecVQGAN sampler") as app:
        gr.Markdown(f"## SpecVQGAN: sound for a video\nmodel `{sampler.models.name}`; vocoder "
                    f"`{cfg.vocoder.ckpt or 'Griffin-Lim'}`; classifier "
                    f"`{cfg.classifier.ckpt or 'none'}`")
        with gr.Tab("sampler"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="your video", sources=["upload"], elem_id="video_in")
                    clip = gr.Dropdown(choices=clips, value=None, label=f"or a clip of {cfg.dataset.name} / "
                                       f"{cfg.split}", visible=bool(clips))
                    class_id = gr.Number(value=0, precision=0, label="class id (class-conditioned model)",
                                         visible=sampler.models.condition == "class")
                with gr.Column():
                    mode = gr.Radio(["nopix", "half"], value=d.mode,
                                    label="mode (half: primed with the video's sound)")
                    temperature = gr.Slider(0.1, 2.0, value=d.temperature, step=0.05, label="temperature")
                    top_k = gr.Number(value=d.top_k or 0, precision=0, label="top-k (0: off)")
                    top_p = gr.Slider(0.0, 1.0, value=d.top_p or 1.0, step=0.01, label="top-p (1: off)")
                    samples = gr.Slider(1, slots, value=1, step=1, label="number of samples")
                    seconds = gr.Slider(1, 60, value=float(cfg.max_seconds or 10), step=0.5,
                                        label="seconds to generate (past 9.85 s: sliding window)")
                    whole = gr.Checkbox(False, label="the whole video (sliding window)")
                    seed = gr.Number(value=int(cfg.seed), precision=0, label="seed")
                    recon = gr.Checkbox(False, label="also the codebook reconstruction of the video's own sound")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
            status = gr.Markdown(elem_id="status")
            live = gr.Image(label="spectrogram so far (dark: not sampled yet)", elem_id="live", interactive=False)
            outputs = []
            for k in range(slots):
                with gr.Column(visible=False) as block:
                    with gr.Row():
                        sound = gr.Audio(label=f"sample {k}", type="filepath", elem_id=f"audio_{k}")
                        mp4 = gr.Video(label=f"sample {k} video", elem_id=f"video_{k}")
                        top5 = gr.Label(num_top_classes=5, label=f"sample {k}: Melception's top 5",
                                        elem_id=f"top5_{k}", visible=sampler.classifier is not None)
                    with gr.Row():
                        spec = gr.Image(label=f"sample {k} spectrogram", elem_id=f"spec_{k}", scale=3)
                        attention = gr.Image(label=f"sample {k}: the last step's attention over the condition "
                                             f"frames", elem_id=f"attention_{k}", scale=1)
                outputs += [block, sound, mp4, spec, attention, top5]
            with gr.Row(visible=False) as recon_row:
                recon_outputs = [recon_row, gr.Audio(label="codebook reconstruction", type="filepath"),
                                 gr.Image(label="reconstruction spectrogram")]
        with gr.Tab("codec"):
            gr.Markdown("Any audio file (any rate, channels, length) through the model's codebook and back.")
            codec_in = gr.Audio(label="audio to encode", sources=["upload"], type="filepath", elem_id="codec_in")
            codec_button = gr.Button("Encode and decode", variant="primary", elem_id="codec_go")
            codec_out = gr.Audio(label="decoded", type="filepath", elem_id="codec_out")
            codec_report = gr.Markdown(elem_id="codec_report")
            codec_file = gr.File(label="the codes (.svqc)", elem_id="codec_file")

        def results(result: Result) -> list:
            values = []
            for k in range(slots):
                if k < len(result.waves):
                    mp4, att = result.mp4s[k], result.attention[k]
                    values += [gr.update(visible=True), str(result.wavs[k]),
                               gr.update(value=str(mp4) if mp4 else None, visible=mp4 is not None),
                               result.images[k], attention_image(att), result.top5[k]]
                else:
                    values += [gr.update(visible=False), None, None, None, None, None]
            r = result.reconstruction
            values += [gr.update(visible=r is not None), str(r["wav"]) if r else None, r["image"] if r else None]
            peak = [int(np.argmax(a)) for a in result.attention]
            return [f"written to `{result.folder}`; the last step attended most to condition position(s) "
                    f"{peak} of {len(result.attention[0])}", result.images[0], *values]

        def on_click(video, clip, mode, temperature, top_k, top_p, samples, seconds, whole, seed, recon, class_id):
            try:
                for item in sampler.stream(video, clip, mode=mode, temperature=temperature, top_k=top_k,
                                           top_p=top_p, samples=samples, max_seconds=None if whole else seconds,
                                           seed=seed, class_id=None if class_id is None else int(class_id),
                                           reconstruct=recon):
                    if isinstance(item, Progress):
                        yield {status: f"sample {item.sample}: {item.done} / {item.total} tokens", live: item.image}
                    else:
                        yield dict(zip([status, live, *outputs, *recon_outputs], results(item)))
            except Exception as error:  # noqa: BLE001 - every failure reaches the page with its reason
                raise page_error(gr, error) from error

        def on_codec(audio):
            try:
                report = sampler.codec_round_trip(audio)
            except Exception as error:  # noqa: BLE001
                raise page_error(gr, error) from error
            return str(report.output), f"`{Path(report.output).name}`: {report.summary()}", \
                str(Path(report.output).with_suffix(".svqc"))

        button.click(on_click, [video, clip, mode, temperature, top_k, top_p, samples, seconds, whole, seed, recon,
                                class_id], [status, live, *outputs, *recon_outputs], api_name="generate")
        codec_button.click(on_codec, [codec_in], [codec_out, codec_report, codec_file], api_name="codec")
    return app


def launch(app, cfg, run_dir: str | Path, block: bool = True):
    """Serve `app` on `server_name`:`port` (0: a free port), loopback by default, files of `run_dir` allowed."""
    return app.queue().launch(server_name=str(cfg.server_name), server_port=int(cfg.port) or None, share=False,
                              allowed_paths=[str(Path(run_dir).resolve())], ssr_mode=False, quiet=True,
                              prevent_thread_lock=not block)


def run(cfg, run_dir: str | Path | None = None) -> None:
    """`python -m stages.app`: build the page and serve it on `server_name`:`port` until interrupted."""

    run_dir = run_folder(run_dir)
    import_gradio()  # fail before loading any model
    launch(build_app(cfg, run_dir), cfg, run_dir)
