"""Fetch the original's released models and data by name: `python -m stages.download what=NAME` or
`what=[NAME,NAME,...]` (Hydra's list syntax: a bare comma would mean a sweep).

`what=list` prints every name with its setting, the paper's FID / MKL and whether it is here. Files go to
`paths.models` (models) and `paths.data` (data archives), resumably, md5-checked, unpacked safely; a second run
downloads nothing. See pipeline/checkpoints/download.py.
"""
import hydra

from pipeline.checkpoints.download import run
from pipeline.config.check import run_stage


@hydra.main(version_base="1.3", config_path="../conf", config_name="download")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "download")  # an unknown key on the command line: the nearest valid one
