"""`report.html` beside an evaluation's `metrics.json`: what a person looks at and listens to.

The page holds the targets (each measure beside its baseline, met or not), every metric with its notes, and per
clip: the real and the generated spectrogram side by side (PNG, low frequencies at the bottom; the video's events
as cyan lines, detected sound onsets as red ticks along the top), audio players for the real and the generated
sound, and the clip's video with the generated soundtrack. Every link is relative and every file lies under the
samples folder (`report/` for what the page adds), so the folder can be copied or served as it is.
"""
from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.files.writes import atomic_write, save_bytes
from pipeline.media.images import colourise

ASSETS = "report"  # folder beside report.html for the PNGs, real wavs and muxed videos
EVENT_RGB = (0, 230, 255)   # cyan: the video's events
ONSET_RGB = (255, 40, 40)   # red: detected sound onsets


@dataclass
class ClipView:
    """One clip of the report: its mels, events and media paths (relative to the report's folder)."""

    clip_id: str
    label: str
    real_mel: np.ndarray              # (80, T) in [0, 1]
    fake_mel: np.ndarray              # (80, T) sample 0
    events: np.ndarray | None         # event frames in the window, or None (no events file)
    real_onsets: np.ndarray
    fake_onsets: np.ndarray
    real_wav: str | None
    fake_wav: str | None
    video: str | None
    predicted: str | None = None      # the classifier's class for the sample, when known


def mel_png(path: Path, mel01: np.ndarray, events: np.ndarray | None, onsets: np.ndarray) -> None:
    """Write the spectrogram PNG with event lines and onset ticks, atomically."""
    import io

    from PIL import Image

    image = colourise(mel01)
    height, width = image.shape[:2]
    for frame in [] if events is None else events:
        col = int(round(float(frame)))
        if 0 <= col < width:
            image[::2, col] = EVENT_RGB  # a dotted line, so the spectrogram stays visible under it
    for frame in onsets:
        if 0 <= int(frame) < width:
            image[: height // 8, max(int(frame) - 1, 0):int(frame) + 2] = ONSET_RGB
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    save_bytes(path, buf.getvalue())


def _fmt(value: Any) -> str:
    if value is None:
        return "&ndash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _targets_table(rows: Sequence[Mapping[str, Any]]) -> str:
    body = []
    for r in rows:
        met = r.get("met")
        cls, text = ("met", "yes") if met else ("missed", "no") if met is False else ("na", "&ndash;")
        base = _fmt(r.get("baseline")) + (f" <small>({html.escape(r['baseline_is'])})</small>"
                                          if r.get("baseline") is not None and r.get("baseline_is") else "")
        note = f"<br><small>{html.escape(r['note'])}</small>" if r.get("note") else ""
        body.append(f"<tr><td>{html.escape(r['measure'])}{note}</td><td>{_fmt(r.get('value'))}</td><td>{base}</td>"
                    f"<td>{html.escape(r['target'])}</td><td class='{cls}'>{text}</td></tr>")
    return ("<table class='targets'><tr><th>measure</th><th>value</th><th>baseline</th><th>target</th>"
            "<th>met</th></tr>" + "".join(body) + "</table>")


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = [f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in sorted(metrics.items())
            if not isinstance(v, (dict, list))]
    notes = [f"<li><b>{html.escape(k)}</b>: {html.escape(str(v))}</li>"
             for k, v in sorted((metrics.get("notes") or {}).items())]
    return ("<table class='metrics'>" + "".join(rows) + "</table>"
            + (f"<h3>Notes</h3><ul>{''.join(notes)}</ul>" if notes else ""))


def _media(tag: str, src: str | None, what: str) -> str:
    if not src:
        return f"<p class='na'>no {what}</p>"
    if tag == "audio":
        return f"<audio controls preload='none' src='{html.escape(src)}'></audio>"
    return f"<video controls preload='metadata' width='320' src='{html.escape(src)}'></video>"


def _clip_section(clip: ClipView, real_png: str, fake_png: str) -> str:
    n_events = "no events file" if clip.events is None else f"{len(clip.events)} events in the window"
    predicted = f", classified as <b>{html.escape(clip.predicted)}</b>" if clip.predicted else ""
    return f"""
<section class='clip'>
  <h3>{html.escape(clip.clip_id)} <small>({html.escape(clip.label)}; {n_events}; onsets: real
  {len(clip.real_onsets)}, generated {len(clip.fake_onsets)}{predicted})</small></h3>
  <div class='pair'>
    <figure><img src='{html.escape(real_png)}' alt='real spectrogram of {html.escape(clip.clip_id)}'>
      <figcaption>real</figcaption>{_media('audio', clip.real_wav, 'real audio')}</figure>
    <figure><img src='{html.escape(fake_png)}' alt='generated spectrogram of {html.escape(clip.clip_id)}'>
      <figcaption>generated (sample 0)</figcaption>{_media('audio', clip.fake_wav, 'generated audio')}</figure>
  </div>
  {_media('video', clip.video, 'video')}
</section>"""


STYLE = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
td, th { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
td.met { background: #c8f0c8; } td.missed { background: #f6c6c6; } td.na, p.na { color: #888; }
.pair { display: flex; gap: 1em; } .pair figure { flex: 1; margin: 0; }
.pair img { width: 100%; image-rendering: pixelated; border: 1px solid #444; }
section.clip { border-top: 1px solid #ddd; padding-top: 0.5em; }
"""


def write_report(folder: str | Path, metrics: Mapping[str, Any], clips: Sequence[ClipView],
                 title: str = "SpecVQGAN evaluation", name: str = "report.html") -> Path:
    """Write `<folder>/<name>` and its PNGs under `<folder>/report/`; media paths in `clips` are relative to
    `folder`. Returns the page's path."""
    folder = Path(folder)
    sections = []
    for i, clip in enumerate(clips):
        stem = f"{i:03d}_{clip.clip_id.replace('/', '__')}"
        real_png, fake_png = f"{ASSETS}/{stem}_real.png", f"{ASSETS}/{stem}_generated.png"
        mel_png(folder / real_png, clip.real_mel, clip.events, clip.real_onsets)
        mel_png(folder / fake_png, clip.fake_mel, clip.events, clip.fake_onsets)
        sections.append(_clip_section(clip, real_png, fake_png))
    targets = metrics.get("targets") or []
    page = f"""<!DOCTYPE html>
<html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Samples: <code>{html.escape(str(metrics.get('samples_dir', '')))}</code>; data set
{html.escape(str(metrics.get('dataset', '')))}, split {html.escape(str(metrics.get('split', '')))};
{_fmt(metrics.get('num_fakes'))} samples of {_fmt(metrics.get('num_reals'))} real clips.</p>
<h2>Targets</h2>
{_targets_table(targets) if targets else "<p class='na'>no targets computed</p>"}
<h2>Clips</h2>
<p>Spectrograms: time left to right (848 frames, 9.85 s), frequency bottom to top; cyan dotted lines are the
video's events, red ticks the sound onsets detected on the spectrogram. The videos carry the generated sound.</p>
{''.join(sections) if sections else "<p class='na'>no clips</p>"}
<h2>All metrics</h2>
{_metrics_table(metrics)}
<p><a href='metrics.json'>metrics.json</a></p>
</body></html>
"""
    out = folder / name
    with atomic_write(out, "w") as f:
        f.write(page)
    return out


def local_links(page: str | Path) -> list[str]:
    """Every src/href of the page (for checks: all should be relative and exist)."""
    import re

    text = Path(page).read_text()
    return re.findall(r"""(?:src|href)=['"]([^'"]+)['"]""", text)
