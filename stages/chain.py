"""Your videos, end to end: a folder of videos to trained models, samples, metrics.json and report.html.

    python -m stages.chain dataset.root=/path/to/videos models=tiny
    python -m stages.chain dataset.root=/path/to/videos models=paper submit=slurm slurm.partition=gpu
    python -m stages.chain dataset.root=/path/to/videos models=paper submit=slurm action=status
"""
import hydra

from pipeline.chain.chain import run
from pipeline.config.check import run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="chain")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "chain")  # an unknown key on the command line: the nearest valid one
