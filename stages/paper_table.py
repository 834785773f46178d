"""A table of the paper from the released models: (conf/paper_table.yaml, pipeline/evaluate/paper_table.py):

    python -m stages.paper_table table=c rows=[212feats_bn]
    python -m stages.paper_table table=c                      # every row of (c)
    python -m stages.paper_table -m table=c rows=212feats_bn,5feats_bn hydra/launcher=slurm   # a row per job

Samples the table's split with the paper's settings (samples per video, top-k, batch), evaluates with the
released Melception and writes a markdown table with the paper's FID / MKL and sample time beside ours.
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.evaluate.paper_table import run, usage


@hydra.main(version_base="1.3", config_path="../conf", config_name="paper_table")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "paper_table", usage)  # --help lists the tables and rows; a misspelt key: the nearest one
