"""The shared machinery of the stages, one package per family (README: the map of the code)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the repository: conf/, stages/, outputs/ by default
CONF = ROOT / "conf"                        # the stages' configs (Hydra's config_path="../conf")
