"""Evaluate generated spectrograms: `python -m stages.evaluate samples_dir=DIR classifier.ckpt=MELCEPTION.pt`.

FID, ISc, KID and MKL on Melception features (spec §7.2) and the class match rate; writes DIR/metrics.json.
Several GPUs split the feature extraction: `accelerate launch --num_processes 4 -m stages.evaluate ...`.
"""
import hydra

import pipeline.config  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="evaluate")
def main(cfg) -> None:
    from pipeline.stages.evaluate import run

    run(cfg)


if __name__ == "__main__":
    from pipeline.config_check import run_stage

    run_stage(main, "evaluate")  # an unknown key on the command line: the nearest valid one
