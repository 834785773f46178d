"""One module per stage: `pipeline/stages/NAME.py` holds the `run(cfg)` of `python -m stages.NAME` (its Hydra entry
point, `stages/NAME.py`, configured by `conf/NAME.yaml`) and what only that stage uses. Code that a second stage,
the app or a benchmark needs lives in the library modules of `pipeline/`; no stage imports another, except that
`paper_table` runs `sample` and `evaluate` through their `run(cfg)`."""
