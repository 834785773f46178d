"""Mel spectrograms (80 x 860) and 10-s waveforms of every clip of a data set, in the original's layout.

    python -m stages.extract_mels dataset=vas split=train chain=original num_workers=8 shard=0 num_shards=4
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.extract.extract_mels import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="extract_mels")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "extract_mels")  # an unknown key on the command line: the nearest valid one
