"""Train the MelGAN vocoder: `python -m stages.train_vocoder dataset=vggsound [trainer=gpu]`.

Needs `<id>_audio.npy` beside the mels (`python -m stages.extract_mels`). Several GPUs:
`accelerate launch --multi_gpu --num_processes 4 -m stages.train_vocoder dataset=vggsound trainer=multi_gpu`.
A rerun with the same overrides resumes from the run folder's checkpoints/last.pt.
"""
import hydra

import pipeline.config  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_vocoder")
def main(cfg) -> None:
    from pipeline.tasks.run import train
    from pipeline.tasks.vocoder import VocoderTask

    train(VocoderTask(cfg), cfg)


if __name__ == "__main__":
    main()
