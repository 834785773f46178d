"""Sample sounds from a trained transformer: a data set split, or your own video.

`python -m stages.sample dataset=vas [transformer.ckpt=PATH] [split=valid] [samples_per_clip=10]` writes the
original's `samples/<split>/cls_<target>/<clip>_sample_<k>.npy` layout (plus wavs and a manifest), resumably;
`python -m stages.sample video=clip.mp4 transformer.ckpt=PATH` writes a wav and the video with the new sound.
Several GPUs: `accelerate launch --num_processes 4 -m stages.sample ...` (clips are split between processes).
"""
import hydra

import pipeline.config  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="sample")
def main(cfg) -> None:
    from pipeline.stages.sample import run

    run(cfg)


if __name__ == "__main__":
    from pipeline.config_check import run_stage

    run_stage(main, "sample")  # an unknown key on the command line: the nearest valid one
