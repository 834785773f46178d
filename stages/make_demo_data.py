"""Generate a small audio-visual data set in the VAS layout: `python -m stages.make_demo_data [key=value]`."""
import hydra

import pipeline.config  # noqa: F401  (registers resolvers)


@hydra.main(version_base="1.3", config_path="../conf", config_name="make_demo_data")
def main(cfg) -> None:
    from pipeline.stages.make_demo_data import run

    run(cfg)


if __name__ == "__main__":
    from pipeline.config_check import run_stage

    run_stage(main, "make_demo_data")  # an unknown key on the command line: the nearest valid one
