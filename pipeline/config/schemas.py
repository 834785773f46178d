"""Typed schemas of the config groups, checked by Hydra when a stage's config is composed (before any work).

Each group's YAML presets list their schema first in their defaults (`- schema`, e.g. conf/trainer/cpu.yaml), the
stages' `data` nodes theirs (`- schema/data@data: transformer`), so an override of the wrong type fails at once,
naming the key and the expected type: `codebook.optim.batch_size=abc` -> "Value 'abc' of type 'str' could not be
converted to Integer ... full_key: codebook.optim.batch_size". A key no schema knows fails too; the stage doors
(`pipeline.config.check.main`) then name the nearest valid key. `register()` (called by `pipeline.config`, which
every stage imports before composing) stores the schemas in Hydra's ConfigStore.

The values live in the YAML files only: fields without a default here are MISSING, so a preset must set them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

# Hydra reads these annotations at run time (OmegaConf does not take `int | None` on Python 3.10): Optional/List/Dict.


@dataclass
class TrainerSchema:
    """conf/trainer/*.yaml: the training loop (pipeline/train/loop.py)."""

    device: str = MISSING                 # auto | cpu | cuda
    mixed_precision: str = MISSING        # no | bf16 | fp16
    grad_accum: int = MISSING
    max_steps: Optional[int] = MISSING
    max_epochs: Optional[int] = MISSING
    val_every: Optional[int] = MISSING
    ckpt_every: Optional[int] = MISSING
    log_every: int = MISSING
    early_stop_patience: Optional[int] = MISSING
    grad_clip: Optional[float] = MISSING
    num_workers: int = MISSING
    find_unused_parameters: bool = MISSING


@dataclass
class SamplingSchema:
    """conf/sampling/*.yaml (pipeline/generate/settings.py checks the values' ranges)."""

    mode: str = MISSING
    temperature: float = MISSING
    top_k: Any = MISSING                  # an int, `auto` or null
    top_p: Optional[float] = MISSING


# ----------------------------------------------------------------------------------- the stages' data nodes
@dataclass
class SplitsData:
    """The splits every training stage's `data` names."""

    train_split: str = MISSING
    val_split: str = MISSING


@dataclass
class ClassifierData(SplitsData):
    """`data` of train_classifier (a centre crop, no augmentation)."""

    spec_len: int = MISSING
    crop_len: int = MISSING


@dataclass
class SpectrogramData(ClassifierData):
    """`data` of train_codebook / train_transformer: which splits, and the mel crop."""

    random_crop: bool = MISSING


@dataclass
class VocoderData(SplitsData):
    """`data` of train_vocoder."""

    val_max_clips: Optional[int] = MISSING


# -------------------------------------------------------------------------------------- the model presets
@dataclass
class Schedule:
    """How long a model trains (`trainer.*` of its stage takes these): every model group spells it the same way."""

    max_steps: Optional[int] = MISSING
    max_epochs: Optional[int] = MISSING
    val_every: Optional[int] = MISSING
    early_stop_patience: Optional[int] = MISSING


@dataclass
class Optim:
    """The optimiser every model group spells the same way: `lr`, scaled as the original when `scale_lr`."""

    lr: float = MISSING                   # the rate; with scale_lr the base rate of the original's train.py
    scale_lr: bool = MISSING              # true: lr x batch x accumulation x processes (codebook, transformer)
    betas: List[float] = MISSING
    batch_size: int = MISSING


@dataclass
class CodebookDecoder:
    double_z: bool = MISSING
    z_channels: int = MISSING
    resolution: int = MISSING
    in_channels: int = MISSING
    out_ch: int = MISSING
    ch: int = MISSING
    ch_mult: List[int] = MISSING
    num_res_blocks: int = MISSING
    attn_resolutions: List[int] = MISSING
    dropout: float = MISSING
    norm_groups: int = MISSING


@dataclass
class CodebookModel:
    n_embed: int = MISSING
    embed_dim: int = MISSING
    beta: float = MISSING
    ddconfig: CodebookDecoder = field(default_factory=CodebookDecoder)


@dataclass
class CodebookLoss:
    disc_start: int = MISSING
    codebook_weight: float = MISSING
    pixelloss_weight: float = MISSING
    disc_num_layers: int = MISSING
    disc_in_channels: int = MISSING
    disc_factor: float = MISSING
    disc_weight: float = MISSING
    perceptual_weight: float = MISSING
    disc_ndf: int = MISSING
    disc_loss: str = MISSING
    min_adapt_weight: float = MISSING
    max_adapt_weight: float = MISSING
    lpaps_stats: Optional[str] = MISSING
    lpaps_trunk: Optional[str] = MISSING


@dataclass
class CodebookOptim(Optim):
    disc_step: str = MISSING


@dataclass
class CodebookSchema:
    """conf/codebook/*.yaml: a VQGAN codebook (models/vqgan.py, models/vqgan_loss.py)."""

    name: str = MISSING
    init: str = MISSING                   # original | data (the codes start by k-means on the first encoder outputs)
    restart_every: Optional[int] = MISSING  # steps between restarts of the codes no input used (null: never)
    model: CodebookModel = field(default_factory=CodebookModel)
    loss: CodebookLoss = field(default_factory=CodebookLoss)
    optim: CodebookOptim = field(default_factory=CodebookOptim)
    schedule: Schedule = field(default_factory=Schedule)


@dataclass
class TransformerOptim(Optim):
    weight_decay: float = MISSING


@dataclass
class TransformerSchema:
    """conf/transformer/*.yaml: the GPT over a codebook's tokens (models/cond_transformer.py, models/gpt.py)."""

    name: str = MISSING
    condition: str = MISSING              # features | class | none
    feat_sample_size: int = MISSING
    feat_depth: int = MISSING
    n_classes: Optional[int] = MISSING
    grid: Optional[List[int]] = None      # [H, W] states one; null: the codebook's (vocabulary, block_size derived)
    n_layer: int = MISSING
    n_head: int = MISSING
    n_embd: int = MISSING
    embd_pdrop: float = MISSING
    resid_pdrop: float = MISSING
    attn_pdrop: float = MISSING
    roll_columns: bool = MISSING
    init: str = MISSING                   # original | time_aligned (Net2NetTransformer.init_time_aligned)
    optim: TransformerOptim = field(default_factory=TransformerOptim)
    sampling: SamplingSchema = field(default_factory=SamplingSchema)
    schedule: Schedule = field(default_factory=Schedule)


@dataclass
class VocoderSchema:
    """conf/vocoder/*.yaml: MelGAN (models/melgan.py); `model` and `loss` are its constructors' keyword arguments."""

    name: str = MISSING
    seq_len: int = MISSING
    sound_crops: float = MISSING          # share of training windows centred on sound (WaveformDataset)
    model: Dict[str, Any] = MISSING
    loss: Dict[str, Any] = MISSING
    optim: Optim = field(default_factory=Optim)
    schedule: Schedule = field(default_factory=Schedule)


@dataclass
class ClassifierOptim(Optim):
    weight_decay: float = MISSING


@dataclass
class ClassifierSchema:
    """conf/classifier/*.yaml: Melception or VGGish-ish; `model` holds the architecture's own keyword arguments."""

    name: str = MISSING
    model: Dict[str, Any] = MISSING
    stats: Optional[str] = MISSING
    bn_recalibration_batches: int = 0
    time_blur: Optional[List[int]] = None  # moving-average widths (frames) mixed into training mels; null: none
    optim: ClassifierOptim = field(default_factory=ClassifierOptim)
    schedule: Schedule = field(default_factory=Schedule)


GROUP_SCHEMAS = {"trainer": TrainerSchema, "sampling": SamplingSchema, "codebook": CodebookSchema,
                 "transformer": TransformerSchema, "vocoder": VocoderSchema, "classifier": ClassifierSchema}
DATA_SCHEMAS = {"spectrogram": SpectrogramData, "classifier": ClassifierData, "vocoder": VocoderData}


def register() -> None:
    """Store the schemas: `<group>/schema` for each group, `schema/data/<name>` for the stages' data nodes."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in GROUP_SCHEMAS.items():
        store.store(group=group, name="schema", node=schema)
    for name, schema in DATA_SCHEMAS.items():
        store.store(group="schema/data", name=name, node=schema)
