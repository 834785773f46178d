"""Sample sounds from a trained transformer: a data set split, or your own video.

`python -m stages.sample dataset=vas [transformer.ckpt=PATH] [split=valid] [samples_per_clip=10]` writes the
original's `samples/<split>/cls_<target>/<clip>_sample_<k>.npy` layout (plus wavs and a manifest), resumably;
`python -m stages.sample video=clip.mp4 transformer.ckpt=PATH` writes a wav and the video with the new sound.
Several GPUs: `accelerate launch --num_processes 4 -m stages.sample ...` (clips are split between processes).
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.generate.sample import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "sample")  # an unknown key on the command line: the nearest valid one
