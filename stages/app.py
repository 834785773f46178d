"""An interactive sampler (Gradio) in place of the original's Streamlit tool.

`python -m stages.app transformer.ckpt=PATH [vocoder.ckpt=PATH] [classifier.ckpt=PATH] [port=7860]` serves a
page on which you upload a video (or pick a clip of the data set's split), choose the sampling settings and watch
the spectrogram fill in as tokens are sampled, then get the generated sounds, the video with the new sound, the
spectrograms, the last step's attention over the condition frames and (with a classifier) Melception's top-5
classes; a second tab runs any audio file through the codebook and back. Needs gradio: `pip install -e .[app]`.
"""
import hydra

from pipeline.app.app import run
from pipeline.config.check import run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="app")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "app")  # an unknown key on the command line: the nearest valid one
