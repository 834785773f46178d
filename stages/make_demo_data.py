"""Generate a small audio-visual data set in the VAS layout: `python -m stages.make_demo_data [key=value]`."""
import hydra

from pipeline.config.check import run_stage
from pipeline.demo.make_demo_data import run


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_demo_data")
def main(cfg) -> None:
    run(cfg)


if __name__ == "__main__":
    run_stage(main, "make_demo_data")  # an unknown key on the command line: the nearest valid one
