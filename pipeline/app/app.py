"""`python -m stages.app`: the Gradio page in place of the original's Streamlit sampler (spec §9.1).

Tab "sampler": upload a video (or pick a clip of the configured data set's split), choose the sampling settings and
the length of the sound (one control: seconds, 0 for the whole video), press "Generate": the spectrogram fills in
while the tokens are sampled, then each sample's sound, the video with the new sound, its spectrogram, a plot of
where the model looked in the video when it chose the last token (the GPT's last layer, mean over heads, over the
condition's frames on the video's time axis) and, with `classifier.ckpt`, Melception's top-5 classes; optionally the
codebook's reconstruction of the video's own sound. Tab "codec": any audio file through the transformer's codebook
and back (`pipeline.codec.transcode.round_trip_file`).

What the controls call is `pipeline.app.session.AppSampler` (the sample stage's sampling, usable without gradio).
Errors reach the page and API clients as gr.Error with their reason. gradio is imported only by `build_app`
(`pip install -e .[app]`). The stage prints the page's address when it is up (`port=0`: a free port).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.app.figures import attention_plot, spectrogram_rgb
from pipeline.app.session import AppSampler, Preview, Result
from pipeline.generate.loading import load_user_models
from pipeline.generate.settings import MODES, SamplingSettings
from pipeline.media.audio import SR
from pipeline.runs.folders import run_folder
from pipeline.runs.lock import hold_run_folder

log = logging.getLogger(__name__)

INSTALL_HINT = "the app needs gradio: install it with `pip install -e .[app]`"
LONGEST = 60  # the length control's right end (s); 0 is the whole video, whatever its length


def import_gradio():
    """gradio, or an ImportError that names the `app` extra. Its usage analytics stay off unless
    GRADIO_ANALYTICS_ENABLED says otherwise (the page is served on loopback, often on machines without internet)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    try:
        import gradio
    except ImportError as error:
        raise ImportError(f"{INSTALL_HINT} ({error})") from error
    return gradio


def page_error(gr, error: Exception):
    """A gr.Error carrying the reason, for the page and API clients (gradio hides other exceptions' text)."""
    if isinstance(error, gr.Error):
        return error
    expected = isinstance(error, (ValueError, FileNotFoundError, RuntimeError))  # ClipError is a RuntimeError
    if not expected:
        log.exception("the app failed")
    return gr.Error(str(error) if expected else f"{type(error).__name__}: {error}")


def page_settings(mode: str, temperature: float, top_k: float | None, top_p: float | None) -> SamplingSettings:
    """The page's sampling controls as settings (top-k 0 and top-p 1 mean off)."""
    return SamplingSettings(str(mode), float(temperature), int(top_k) if top_k else None,
                            float(top_p) if top_p and top_p < 1 else None)


def progress_status(preview: Preview, samples: int) -> str:
    """`Sample 1 of 2: 120 of 265 sound tokens (45%), the first 4.3 s of sound`."""
    return (f"Sample {preview.sample + 1} of {samples}: {preview.done} of {preview.total} sound tokens "
            f"({100 * preview.done // preview.total}%), the first {preview.seconds:.1f} s of sound")


def done_status(result: Result) -> str:
    """What was made, where it went and where the model looked, in plain words."""
    n, seconds = len(result.waves), len(result.waves[0]) / SR if result.waves else 0.0
    text = f"Done: {n} sound{'s' if n != 1 else ''} of {seconds:.1f} s, saved in `{result.folder}`."
    if result.attention and result.attention[0].size > 1:
        end = result.video_seconds
        looked = [float(times[int(att.argmax())]) for att, times in zip(result.attention, result.attention_seconds)]
        places = [f"{t:.1f} s" + (", past the video's end (where its features are padding)"
                                   if end is not None and t > end else "") for t in looked]
        text += (" When it chose the last sound token, the model looked most at the video around "
                 + "; ".join(places) + ". The plot below each sample shows where it looked.")
    return text


def build_app(sampler: AppSampler):
    """The Gradio Blocks of the page, calling `sampler`."""
    gr = import_gradio()
    cfg = sampler.cfg
    slots = int(cfg.max_samples)
    clips = sampler.clips()
    d = sampler.defaults
    with gr.Blocks(title="SpecVQGAN sampler") as app:
        gr.Markdown(f"## SpecVQGAN: sound for a video\nmodel `{sampler.models.name}`; vocoder "
                    f"`{cfg.vocoder.ckpt or 'Griffin-Lim'}`; classifier `{cfg.classifier.ckpt or 'none'}`; tokens "
                    f"by {sampler.models.sampler}")
        with gr.Tab("sampler"):
            with gr.Row():
                with gr.Column():
                    video = gr.Video(label="your video", sources=["upload"], elem_id="video_in")
                    clip = gr.Dropdown(choices=clips, value=None, label=f"or a clip of {cfg.dataset.name} / "
                                       f"{cfg.split}", visible=bool(clips))
                    class_id = gr.Number(value=0, precision=0, label="class id (class-conditioned model)",
                                         visible=sampler.models.condition == "class")
                with gr.Column():
                    mode = gr.Radio(list(MODES), value=d.mode, label="mode (half: primed with the video's sound)")
                    temperature = gr.Slider(0.1, 2.0, value=d.temperature, step=0.05, label="temperature")
                    top_k = gr.Number(value=d.top_k or 0, precision=0, label="top-k (0: off)")
                    top_p = gr.Slider(0.0, 1.0, value=d.top_p or 1.0, step=0.01, label="top-p (1: off)")
                    samples = gr.Slider(1, slots, value=1, step=1, label="number of samples")
                    seconds = gr.Slider(0, LONGEST, value=float(cfg.max_seconds or 0), step=0.5,
                                        label="seconds of sound (0: the whole video; past 9.85 s the model's "
                                              "window slides along the video)", elem_id="seconds")
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
                    spec = gr.Image(label=f"sample {k} spectrogram", elem_id=f"spec_{k}")
                    attention = gr.Image(label=f"sample {k}: where the model looked in the video",
                                         show_label=False, elem_id=f"attention_{k}")  # the plot's title says it
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
                    mp4 = result.mp4s[k]
                    plot = attention_plot(result.attention[k], result.attention_seconds[k], result.video_seconds)
                    values += [gr.update(visible=True), str(result.wavs[k]),
                               gr.update(value=str(mp4) if mp4 else None, visible=mp4 is not None),
                               spectrogram_rgb(result.mels[k]), plot, result.top5[k]]
                else:
                    values += [gr.update(visible=False), None, None, None, None, None]
            r = result.reconstruction
            values += [gr.update(visible=r is not None), str(r["wav"]) if r else None,
                       spectrogram_rgb(r["mel"]) if r else None]
            return [done_status(result), spectrogram_rgb(result.mels[0]), *values]

        def on_click(video, clip, mode, temperature, top_k, top_p, samples, seconds, seed, recon, class_id):
            try:
                settings = page_settings(mode, temperature, top_k, top_p)
                for item in sampler.stream(video, clip, settings, samples=int(samples),
                                           max_seconds=float(seconds) or None, seed=int(seed),
                                           class_id=None if class_id is None else int(class_id), reconstruct=recon):
                    if isinstance(item, Preview):
                        yield {status: progress_status(item, int(samples)), live: spectrogram_rgb(item.mel)}
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

        button.click(on_click, [video, clip, mode, temperature, top_k, top_p, samples, seconds, seed, recon,
                                class_id], [status, live, *outputs, *recon_outputs], api_name="generate")
        codec_button.click(on_codec, [codec_in], [codec_out, codec_report, codec_file], api_name="codec")
    return app


def launch(app, sampler: AppSampler) -> str:
    """Serve `app` on `server_name`:`port` (0: a free port), loopback by default, files of the run folder allowed,
    in the background; prints and returns the page's address."""
    cfg = sampler.cfg
    app.queue().launch(server_name=str(cfg.server_name), server_port=int(cfg.port) or None, share=False,
                       allowed_paths=[str(sampler.run_dir.resolve())], ssr_mode=False, quiet=True,
                       prevent_thread_lock=True)
    print(f"[app] the page is up at {app.local_url} (Ctrl-C stops it); files go to {sampler.run_dir}", flush=True)
    return app.local_url


def run(cfg, run_dir: str | Path | None = None) -> None:
    """`python -m stages.app`: build the page and serve it on `server_name`:`port` until interrupted."""
    run_dir = run_folder(run_dir)
    import_gradio()  # fail before loading any model
    with hold_run_folder(run_dir):  # two servers on one folder would number their requests alike
        sampler = AppSampler(cfg, run_dir, load_user_models(cfg))
        app = build_app(sampler)
        launch(app, sampler)
        app.block_thread()  # until Ctrl-C (gradio then closes the server)
