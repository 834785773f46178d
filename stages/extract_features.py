"""Visual features (per frame, 21.5 fps) of every clip of a data set, in the original's layout.

    python -m stages.extract_features dataset=vas features=bninception \
        features.weights=/path/bn_inception-9f5701afb96c8044.pth
    python -m stages.extract_features dataset=vas features=resnet50 features.weights=/path/resnet50.pth num_workers=4
    python -m stages.extract_features features=efficientnet_lite0     # offline demo weights
"""
import hydra

from pipeline.config.check import run_stage
from pipeline.extract.extract_features import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="extract_features")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "extract_features")  # an unknown key on the command line: the nearest valid one
