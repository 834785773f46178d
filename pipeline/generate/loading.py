"""What sampling a trained transformer needs, loaded once: the model and its checkpoint's metadata, the sampling
settings, the features it was trained on, the vocoder, the feature network (`UserModels`), and the seeds of each
sample. The sample stage, the app and the long-video sampler share it."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from pipeline.build.transformer import load_transformer
from pipeline.build.vocoder import load_vocoder_or_griffinlim
from pipeline.checkpoints.reading import read_checkpoint
from pipeline.checkpoints.released import model_files
from pipeline.checkpoints.zoo import released_meta, resolve
from pipeline.config.device import resolve_device
from pipeline.extract.visual import WEIGHTS_HELP
from pipeline.extract.visual import load_model as load_feature_model
from pipeline.generate.decoding import TokenSampler
from pipeline.generate.settings import SamplingSettings


def read_meta(path: Path) -> dict[str, Any]:
    """Everything in one of our transformer checkpoints except its tensors (model_args, features, sampling...)."""

    ckpt = read_checkpoint(path, mmap=True)
    return {k: v for k, v in ckpt.items() if k not in ("state_dict", "train_state")} if isinstance(ckpt, dict) else {}


def load_model(cfg, device: torch.device):
    """(wrapper in eval mode on `device`, checkpoint metadata)."""

    # model: a released name (pipeline/checkpoints/zoo.yaml) or a path
    source = cfg.get("model") or cfg.transformer.ckpt
    path = resolve(source, cfg=cfg)
    if not path.exists():
        raise FileNotFoundError(f"transformer.ckpt={path} does not exist: train one with `python -m "
                                f"stages.train_transformer dataset={cfg.dataset.name}` (its run with no overrides is "
                                f"the default), pass transformer.ckpt=PATH or model=<a released model's name>")
    released = released_meta(source, cfg)  # the original's model: its backbone's features preset
    meta = released if released is not None else read_meta(model_files(path, "transformer").checkpoint)
    codebook = resolve(cfg.codebook.ckpt, cfg=cfg)
    model = load_transformer(path, codebook_path=codebook).to(device).eval()
    meta["model_args"], meta["path"] = dict(model.model_args), str(path.resolve())
    return model, meta


def sampling_settings(cfg, meta: Mapping[str, Any]) -> SamplingSettings:
    """The config's `sampling` group; `top_k: auto` is the checkpoint's preset, else half the vocabulary."""
    return SamplingSettings.from_config(cfg.sampling, meta.get("sampling"), int(meta["model_args"]["vocab_size"]))


def features_config(cfg, meta: Mapping[str, Any]) -> dict[str, Any] | None:
    """The features the model was trained on (`+features=KIND` replaces them, `feature_weights` the weights)."""
    fcfg = cfg.get("features")
    fcfg = OmegaConf.to_container(fcfg, resolve=True) if fcfg is not None else meta.get("features")
    if fcfg is None:
        return None
    fcfg = dict(fcfg)
    if cfg.get("feature_weights"):
        fcfg["weights"] = str(cfg.feature_weights)
    return fcfg


def seeded_generator(device: torch.device, seed: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(int(seed) % (2 ** 63))


@dataclass
class UserModels:
    """What sampling a user's video needs, loaded once (the stage and the app share it)."""

    model: Any                       # the transformer wrapper (eval mode, on `device`)
    sampler: TokenSampler            # its tokens, the one way the stages sample them
    meta: dict[str, Any]             # the checkpoint's metadata (model_args, features, sampling)
    fcfg: dict[str, Any] | None      # the features the model was trained on
    vocode: Any                      # MelGAN, else Griffin-Lim: (80, T) mel -> waveform
    device: torch.device
    name: str = "transformer.ckpt"   # names the checkpoint in error messages
    cache: dict = field(default_factory=dict)  # feature networks, by (kind, weights, width)

    @property
    def args(self) -> dict[str, Any]:
        return self.meta["model_args"]

    @property
    def condition(self) -> str:
        return str(self.args.get("condition", "features"))


def load_user_models(cfg) -> UserModels:
    """The transformer, its sampler, its features config and the vocoder of a sample config (`transformer.ckpt`,
    `codebook.ckpt`, `sampling`, `vocoder.ckpt`, `feature_weights`, `+features`, `device`)."""

    device = resolve_device(cfg.device)
    model, meta = load_model(cfg, device)
    return UserModels(model, TokenSampler.from_config(model, cfg.sampling), meta, features_config(cfg, meta),
                      load_vocoder_or_griffinlim(cfg.vocoder.ckpt, device=device, zoo_cfg=cfg), device,
                      str(cfg.get("model") or cfg.transformer.ckpt))


def sample_generator(models: UserModels, seed: int, k: int) -> torch.Generator:
    """The generator of a clip's sample k: seeded by seed * 1_000_003 + k (the stage and the app alike)."""
    return seeded_generator(models.device, int(seed) * 1_000_003 + k)


def feature_network(models: UserModels):
    """The network of the features the transformer was trained on, loaded once into `models.cache`; an error
    naming the key to set when its weights are not given."""
    fcfg = models.fcfg
    if fcfg is None:
        raise ValueError(f"{models.name} records no features config: pass +features=KIND")
    kind, weights = str(fcfg["name"]), fcfg.get("weights")
    if weights in (None, "", "???"):
        raise ValueError(f"the model was trained on {kind} features and no weights for that network are given: pass "
                         f"feature_weights=PATH, a local file: {WEIGHTS_HELP.get(kind, kind)}")
    key = (kind, str(weights), fcfg.get("width"))
    if key not in models.cache:
        models.cache[key] = load_feature_model(kind, str(weights), width=fcfg.get("width"), device=models.device)
    return models.cache[key]
