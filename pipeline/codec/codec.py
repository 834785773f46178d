"""`python -m stages.codec`: files or folders through the codec (`pipeline.codec.transcode`: encode, decode,
roundtrip)."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from pipeline.build.codebook import load_codebook
from pipeline.build.vocoder import load_vocoder_or_griffinlim
from pipeline.checkpoints.zoo import resolve
from pipeline.codec.transcode import (
    AUDIO_SUFFIXES,
    DEFAULT_OVERLAP_FRAMES,
    SNR_NOTE,
    CodecError,
    Header,
    Report,
    codebook_identity,
    decode_file,
    encode_file,
    round_trip_file,
)
from pipeline.config.device import resolve_device
from pipeline.files.writes import save_json
from pipeline.runs.folders import run_folder
from pipeline.runs.inputs import require_checkpoint
from pipeline.runs.outcomes import Outcomes, say

log = logging.getLogger(__name__)


def _pairs(inp: Path, out: Path, mode: str) -> list[tuple[Path, Path]]:
    """(input, output) files: one file, or every matching file of a folder into an output folder."""
    if not inp.exists():
        raise FileNotFoundError(f"codec input {inp} does not exist")
    if inp.is_file():
        return [(inp, out)]
    if mode in ("encode", "roundtrip"):
        files = sorted(p for p in inp.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
        suffix = ".svqc" if mode == "encode" else ""
        return [(p, out / p.relative_to(inp).with_suffix(suffix)) for p in files]
    return [(p, out / p.relative_to(inp).with_suffix(".wav")) for p in sorted(inp.rglob("*.svqc"))]


MODES = ("encode", "decode", "roundtrip")


def check_inputs(cfg) -> None:
    """Before a model loads (pipeline.config.check.StageChecks): the input files, the checkpoints, and, to decode,
    every .svqc header (each field against the file's size: `pipeline.codec.transcode.Header.from_bytes`)."""
    pairs = _pairs(Path(str(cfg.input)), Path(str(cfg.output)), str(cfg.mode))
    if not pairs:
        raise FileNotFoundError(f"input={cfg.input}: no {'.svqc' if cfg.mode == 'decode' else 'audio'} files in it")
    require_checkpoint(cfg.codebook.ckpt, "codebook.ckpt", cfg, "the codebook that encodes (and decoded) the files")
    require_checkpoint(cfg.vocoder.ckpt, "vocoder.ckpt", cfg, "or leave it unset for Griffin-Lim")
    if cfg.mode == "decode":
        for inp, _ in pairs:
            Header.from_bytes(inp.read_bytes(), str(inp))


def run(cfg, run_dir: str | os.PathLike | None = None) -> list[Report]:
    """The codec stage: `mode` encode, decode or roundtrip, `input` a file or folder, `output` a file or folder
    (roundtrip: `<output>.svqc` and `<output>.wav`, or a folder of both)."""

    if cfg.mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, not {cfg.mode!r}")
    overlap = DEFAULT_OVERLAP_FRAMES if cfg.get("overlap_frames") is None else int(cfg.overlap_frames)

    pairs = _pairs(Path(cfg.input), Path(cfg.output), cfg.mode)  # the inputs first, before any model loads
    if not pairs:
        raise FileNotFoundError(f"no {'.svqc' if cfg.mode == 'decode' else 'audio'} files under {cfg.input}")
    run_dir = run_folder(run_dir, required=False)  # none outside @hydra.main: no report file
    torch.set_num_threads(max(1, int(cfg.get("num_threads") or torch.get_num_threads())))
    device = resolve_device(cfg.device)

    model = load_codebook(resolve(cfg.codebook.ckpt, cfg=cfg), map_location=device)  # a path or a released name
    identity = codebook_identity(model)
    vocoder = None
    if cfg.mode in ("decode", "roundtrip"):
        vocoder = load_vocoder_or_griffinlim(cfg.vocoder.ckpt, device=device, zoo_cfg=cfg)
    reports = []
    done = Outcomes("codec")
    for inp, out in pairs:
        kwargs = {"window_frames": int(cfg.window_frames), "full_last_window": bool(cfg.full_last_window),
                  "overlap_frames": overlap}
        try:
            if cfg.mode == "encode":
                r = encode_file(model, inp, out, batch_size=int(cfg.batch_size), identity=identity, **kwargs)
            elif cfg.mode == "roundtrip":
                r = round_trip_file(model, inp, out, vocoder, batch_size=int(cfg.batch_size), identity=identity,
                                    **kwargs)
            else:
                r = decode_file(model, inp, out, vocoder, batch_size=int(cfg.batch_size), identity=identity)
        except (CodecError, ValueError, OSError) as error:
            if len(pairs) == 1:
                raise
            done.failed(inp, error)
            continue
        done.written(f"{inp} -> {out}  ({cfg.mode}: {r.summary()})")
        reports.append(r)
    if cfg.mode == "roundtrip":
        say(f"[codec] {SNR_NOTE}")
    if run_dir is not None:
        save_json(Path(run_dir) / "codec_report.json", [r.as_dict() for r in reports])
    done.finish()
    if done.any_failed:
        raise SystemExit(f"[codec] {done.summary()}: " + "; ".join(f"{i}: {why}" for i, why in done.failures))
    return reports
