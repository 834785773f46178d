"""Train the MelGAN vocoder: `python -m stages.train_vocoder dataset=vggsound [trainer=gpu]`.

Needs `<id>_audio.npy` beside the mels (`python -m stages.extract_mels`). Several GPUs:
`accelerate launch --multi_gpu --num_processes 4 -m stages.train_vocoder dataset=vggsound trainer=gpu`.
A rerun with the same overrides resumes from the run folder's checkpoints/last.pt.
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.train.train_vocoder import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_vocoder")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "train_vocoder")  # an unknown key on the command line: the nearest valid one
