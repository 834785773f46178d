"""The neural audio codec: `python -m stages.codec mode=encode|decode|roundtrip input=... output=... codebook.ckpt=...`.

Encode turns any audio file (any rate, channels, length) into a compact file of codebook indices (~0.14-0.26
kbps); decode turns it back into 22050 Hz audio through `vocoder.ckpt` (Griffin-Lim when unset); roundtrip does
both and reports the mel distance and log-spectral distance (dB) against the input. Each prints bitrate and
compression ratio and writes `<run>/codec_report.json`. See pipeline/codec/transcode.py for the format,
pipeline/codec/codec.py for the stage.
"""
import hydra

from pipeline.codec.codec import run
from pipeline.config.check import run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="codec")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "codec")  # an unknown key on the command line: the nearest valid one
