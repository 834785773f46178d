"""Train the stage-2 transformer: `python -m stages.train_transformer dataset=vas [codebook.ckpt=PATH]`.

Paper settings: `experiment=vas_212feats_bn` (conf/experiment/). Condition size sweep:
`python -m stages.train_transformer --multirun transformer.feat_sample_size=1,5,212 [hydra/launcher=slurm]`.
Several GPUs: `accelerate launch --multi_gpu --num_processes 4 -m stages.train_transformer ... trainer=gpu`.
A rerun with the same overrides resumes from the run folder's checkpoints/last.pt.
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.train.train_transformer import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_transformer")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "train_transformer")  # an unknown key on the command line: the nearest valid one
