"""Evaluate generated spectrograms: `python -m stages.evaluate samples_dir=DIR classifier.ckpt=MELCEPTION.pt`.

FID, ISc, KID and MKL on Melception features (spec §7.2) and the class match rate; writes DIR/metrics.json.
Several GPUs split the feature extraction: `accelerate launch --num_processes 4 -m stages.evaluate ...`.
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.evaluate.evaluate import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "evaluate")  # an unknown key on the command line: the nearest valid one
