"""A table of the paper from the released models, one command (conf/paper_table.yaml, pipeline/paper_table.py):

    python -m launch.paper_table table=c rows=[212feats_bn]
    python -m launch.paper_table table=c                      # every row of (c)
    python -m launch.paper_table -m table=c rows=212feats_bn,5feats_bn hydra/launcher=slurm   # a row per job

Samples the table's split with the paper's settings (samples per video, top-k, batch), evaluates with the
released Melception and writes a markdown table with the paper's FID / MKL and sample time beside ours.
"""
import hydra

import pipeline.config  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="paper_table")
def main(cfg) -> None:
    from pipeline.paper_table import run

    run(cfg)


if __name__ == "__main__":
    main()
