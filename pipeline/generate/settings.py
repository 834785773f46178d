"""How tokens are sampled, as one typed object.

Read from the `sampling` config group (conf/sampling/default.yaml: `sampling.*` of the sample stage and the app)
and from a transformer preset's `transformer.sampling` (the same group, inherited; its checkpoints record it);
used by the sample stage, the app, the long-video sampler and the training stage's logged samples. The group's
`precision` and `compile` say how the tokens are computed (`pipeline.generate.decoding.TokenSampler`).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("nopix", "half")  # nopix: from scratch; half: primed with the first 130 ground-truth tokens
FIELDS = ("mode", "temperature", "top_k", "top_p")  # what changes the tokens' distribution (sampling.json records it)


@dataclass(frozen=True)
class SamplingSettings:
    """mode, temperature, top_k (None: off), top_p (None: off); checked when made. No defaults here: they are the
    config's (conf/sampling/default.yaml)."""

    mode: str
    temperature: float
    top_k: int | None
    top_p: float | None

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"sampling.mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not self.temperature > 0:
            raise ValueError(f"sampling.temperature must be > 0, got {self.temperature!r}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"sampling.top_k must be >= 1 (or null: off), got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"sampling.top_p must be in (0, 1] (or null: off), got {self.top_p!r}")

    @classmethod
    def from_config(cls, node: Mapping[str, Any], recorded: Mapping[str, Any] | None = None,
                    vocab: int | None = None) -> SamplingSettings:
        """`node`: a sampling config. Its `top_k: auto` takes `recorded`'s top_k (the settings a checkpoint was
        trained with), else half of `vocab`; a top_k above `vocab` is refused."""
        top_k = node["top_k"]
        if top_k == "auto":
            top_k = (recorded or {}).get("top_k")
            if top_k in (None, "auto"):
                if vocab is None:
                    raise ValueError("sampling.top_k=auto needs the model's vocabulary size or recorded settings")
                top_k = int(vocab) // 2
        if top_k is not None and vocab is not None and int(top_k) > int(vocab):
            raise ValueError(f"sampling.top_k={top_k}: at most the model's vocabulary of {vocab} codes (or auto, or "
                             f"null for no top-k)")
        top_p = node["top_p"]
        return cls(mode=str(node["mode"]), temperature=float(node["temperature"]),
                   top_k=None if top_k is None else int(top_k), top_p=None if top_p is None else float(top_p))

    @classmethod
    def coerce(cls, value: SamplingSettings | Mapping[str, Any]) -> SamplingSettings:
        """The settings themselves, or made from a mapping of their four fields."""
        return value if isinstance(value, cls) else cls(**{k: value[k] for k in FIELDS})

    def options(self) -> dict[str, Any]:
        """The keyword arguments of `pipeline.generate.sampling.sample` / `sample_steps` (and the record in
        sampling.json)."""
        return asdict(self)
