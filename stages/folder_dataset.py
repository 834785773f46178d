"""A folder of videos as a data set: its clips, splits and skipped files (pipeline/data/folder.py).

    python -m stages.folder_dataset dataset.root=/path/to/videos part=index
    python -m stages.folder_dataset dataset.root=/path/to/videos part=splits   (after the extraction stages)
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.data.folder_dataset import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="folder_dataset")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "folder_dataset")  # an unknown key on the command line: the nearest valid one
