"""The neural audio codec: `python -m stages.codec mode=encode|decode|roundtrip input=... output=... codebook.ckpt=...`.

Encode turns any audio file (any rate, channels, length) into a compact file of codebook indices (~0.14-0.26
kbps); decode turns it back into 22050 Hz audio through `vocoder.ckpt` (Griffin-Lim when unset); roundtrip does
both and reports the mel L1 and SNR against the input. Each prints bitrate and compression ratio and writes
`<run>/codec_report.json`. See pipeline/codec.py for the format.
"""
import hydra

import pipeline.config  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="codec")
def main(cfg) -> None:
    from pipeline.codec import run

    run(cfg)


if __name__ == "__main__":
    main()
