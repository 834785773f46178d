"""Train a mel classifier: `python -m stages.train_classifier classifier=melception dataset=vggsound [trainer=gpu]`.

classifier=vggishish for VGGish-ish; the demo uses classifier=melception_tiny (the evaluation stage's Melception).
Validates once per epoch, keeps best.pt on val/loss and stops after 3 validations without improvement, as the
original. A rerun with the same overrides resumes from the run folder's checkpoints/last.pt.
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.train.train_classifier import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="train_classifier")
def main(cfg) -> None:
    run(cfg)  # trainer.val_every / ckpt_every null: once per epoch (the loop)


if __name__ == "__main__":
    run_stage(main, "train_classifier")  # an unknown key on the command line: the nearest valid one
