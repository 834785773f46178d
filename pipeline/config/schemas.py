"""Typed schemas of the configs: every key of every stage, with the range of values each takes.

Two checks read them, both before any work and before a run folder is made:
- Hydra's, for the config groups: each group's YAML presets list their schema first in their defaults (`- schema`,
  e.g. conf/trainer/cpu.yaml), the stages' `data` nodes theirs (`- schema/data@data: transformer`), so an override
  of the wrong type fails while the config is composed: `codebook.optim.batch_size=abc` -> "Value 'abc' of type
  'str' could not be converted to Integer ... full_key: codebook.optim.batch_size".
- `pipeline.config.check.config_problems`, for the whole composed config of a stage (`STAGE_SCHEMAS`, top-level
  keys included): a key no schema knows (also one added with `+`), a value of the wrong type, a value out of its
  range; each named with its value and what is allowed (`samples_per_clip=0: an integer >= 1`).

A range sits next to its key's type: `samples_per_clip: int = ranged(ge=1)`, `mode: str = ranged(choices=MODES)`.
A key declared without one (`x: int = MISSING`) is checked for its type only, so adding a key never needs a range.
Fields typed `Dict[str, Any]` (or `Any`) are open: any key below them is accepted.

The values live in the YAML files only: fields without a default here are MISSING, so a preset must set them.
`register()` (called by `pipeline.config`, which every stage imports before composing) stores the group schemas in
Hydra's ConfigStore.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

# Hydra reads these annotations at run time (OmegaConf does not take `int | None` on Python 3.10): Optional/List/Dict.


@dataclass(frozen=True)
class Range:
    """The values a key takes beyond its type: bounds (`ge`, `gt`, `le`, `lt`; each element of a list) or `choices`;
    `also` lists words accepted beside a number (`top_k: auto`), `kind` names the type where the annotation is Any.
    `describe()` says it in words."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: tuple | None = None
    also: tuple = ()
    kind: str | None = None               # what the value is, where the type annotation cannot say (Any)

    def allows(self, value: Any) -> bool:
        if value is None or value in self.also:
            return True
        if self.kind == "an integer" and not (isinstance(value, int) and not isinstance(value, bool)):
            return False
        if isinstance(value, (list, tuple)):
            return all(self.allows(v) for v in value)
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return not self.also  # a word where a number or `also` is due; else the type check speaks
        return ((self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
                and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt))

    def describe(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(map(str, self.choices))
        bounds = [f"{op} {_number(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if v is not None]
        return " and ".join(bounds) + "".join(f", or {w}" for w in self.also)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def ranged(default: Any = MISSING, **bounds: Any) -> Any:
    """A dataclass field whose values `Range(**bounds)` allows (with `default`, MISSING unless given)."""
    return field(default=default, metadata={"range": Range(**bounds)})


def positive(default: Any = MISSING) -> Any:
    """An integer key that counts something: >= 1."""
    return ranged(default, ge=1)


def counting(default: Any = MISSING) -> Any:
    """An integer key where 0 means none (workers, an interval whose 0 means "only at the end"): >= 0."""
    return ranged(default, ge=0)


def share(default: Any = MISSING) -> Any:
    """A probability or share: in [0, 1)."""
    return ranged(default, ge=0, lt=1)


PRECISIONS = ("no", "bf16", "fp16")


@dataclass
class TrainerSchema:
    """conf/trainer/*.yaml: the training loop (pipeline/train/loop.py)."""

    device: str = MISSING                 # auto | cpu | cuda
    mixed_precision: str = ranged(choices=PRECISIONS)
    grad_accum: int = positive()          # micro-batches per optimiser step
    max_steps: Optional[int] = positive()
    max_epochs: Optional[int] = positive()
    val_every: Optional[int] = counting()  # 0: only at the end; null: once per epoch
    ckpt_every: Optional[int] = counting()  # 0: only at the end; null: at every validation
    log_every: int = positive()
    early_stop_patience: Optional[int] = positive()
    grad_clip: Optional[float] = ranged(gt=0)
    num_workers: int = counting()
    find_unused_parameters: bool = MISSING
    compile: bool = MISSING               # speed options (pipeline/train/loop.py: speed_up)
    fused_optimizer: bool = MISSING
    channels_last: bool = MISSING
    tf32: bool = MISSING


@dataclass
class SamplingSchema:
    """conf/sampling/*.yaml (pipeline/generate/settings.py checks the values' ranges)."""

    mode: str = ranged(choices=("nopix", "half"))  # pipeline.generate.settings.MODES
    temperature: float = ranged(gt=0)
    top_k: Any = ranged(ge=1, also=("auto", "null"), kind="an integer")  # at most the vocabulary (checked once read)
    top_p: Optional[float] = ranged(gt=0, le=1)
    precision: str = ranged(choices=("auto", "fp32", "bf16"))  # pipeline/generate/decoding.py
    compile: bool = MISSING


# ----------------------------------------------------------------------------------- the stages' data nodes
@dataclass
class SplitsData:
    """The splits every training stage's `data` names."""

    train_split: str = MISSING
    val_split: str = MISSING


@dataclass
class ClassifierData(SplitsData):
    """`data` of train_classifier (a centre crop, no augmentation)."""

    spec_len: int = positive()
    crop_len: int = positive()


@dataclass
class SpectrogramData(ClassifierData):
    """`data` of train_codebook / train_transformer: which splits, and the mel crop."""

    random_crop: bool = MISSING


@dataclass
class VocoderData(SplitsData):
    """`data` of train_vocoder."""

    val_max_clips: Optional[int] = positive()


# -------------------------------------------------------------------------------------- the model presets
@dataclass
class Schedule:
    """How long a model trains (`trainer.*` of its stage takes these): every model group spells it the same way."""

    max_steps: Optional[int] = positive()
    max_epochs: Optional[int] = positive()
    val_every: Optional[int] = counting()
    early_stop_patience: Optional[int] = positive()


@dataclass
class Optim:
    """The optimiser every model group spells the same way: `lr`, scaled as the original when `scale_lr`."""

    lr: float = ranged(gt=0)              # the rate; with scale_lr the base rate of the original's train.py
    scale_lr: bool = MISSING              # true: lr x batch x accumulation x processes (codebook, transformer)
    betas: List[float] = share()          # Adam's, each in [0, 1)
    batch_size: int = positive()


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
    dropout: float = share()
    norm_groups: int = positive()


@dataclass
class CodebookModel:
    n_embed: int = positive()
    embed_dim: int = positive()
    beta: float = ranged(ge=0)
    ddconfig: CodebookDecoder = field(default_factory=CodebookDecoder)


@dataclass
class CodebookLoss:
    disc_start: int = counting()
    codebook_weight: float = ranged(ge=0)
    pixelloss_weight: float = ranged(ge=0)
    disc_num_layers: int = positive()
    disc_in_channels: int = positive()
    disc_factor: float = ranged(ge=0)
    disc_weight: float = ranged(ge=0)
    perceptual_weight: float = ranged(ge=0)
    disc_ndf: int = positive()
    disc_loss: str = ranged(choices=("hinge", "vanilla"))
    min_adapt_weight: float = MISSING
    max_adapt_weight: float = MISSING
    lpaps_stats: Optional[str] = MISSING
    lpaps_trunk: Optional[str] = MISSING


@dataclass
class CodebookOptim(Optim):
    disc_step: str = ranged(choices=("original", "fast"))  # pipeline.train.train_codebook.DISC_STEPS


@dataclass
class CodebookSchema:
    """conf/codebook/*.yaml: a VQGAN codebook (models/vqgan.py, models/vqgan_loss.py)."""

    name: str = MISSING
    ckpt: Optional[str] = MISSING          # a trained model instead of training this preset (the chain's)
    init_from: Optional[str] = MISSING    # a checkpoint, log folder or released name a new run starts from; null: none
    init: str = ranged(choices=("original", "data"))  # original: uniform codes; data: k-means of encoder outputs
    restart_every: Optional[int] = ranged(ge=1)  # steps between restarts of unused codes (null: never)
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
    condition: str = ranged(choices=("features", "class", "none"))
    feat_sample_size: int = positive()
    feat_depth: int = positive()
    n_classes: Optional[int] = positive()
    grid: Optional[List[int]] = ranged(None, ge=1)  # [H, W] states one; null: the codebook's (vocabulary, block_size)
    n_layer: int = positive()
    n_head: int = positive()
    n_embd: int = positive()
    embd_pdrop: float = share()
    resid_pdrop: float = share()
    attn_pdrop: float = share()
    roll_columns: bool = MISSING
    init: str = ranged(choices=("original", "time_aligned"))  # Net2NetTransformer.init_time_aligned
    init_from: Optional[str] = MISSING    # a checkpoint, log folder or released name a new run starts from; null: none
    trainable: Optional[List[str]] = MISSING  # glob patterns of the GPT parameters that train; null: all
    reinit: Optional[List[str]] = MISSING  # with init_from: glob patterns of GPT parameters that start afresh
    monitor: str = ranged(choices=("loss", "samples"))  # the validation measure best.pt is chosen by
    monitor_clips: Optional[int] = positive()  # monitor=samples: validation clips sampled (null: all)
    monitor_draws: int = positive()  # monitor=samples: samples of each
    optim: TransformerOptim = field(default_factory=TransformerOptim)
    sampling: SamplingSchema = field(default_factory=SamplingSchema)
    schedule: Schedule = field(default_factory=Schedule)


@dataclass
class VocoderSchema:
    """conf/vocoder/*.yaml: MelGAN (models/melgan.py); `model` and `loss` are its constructors' keyword arguments."""

    name: str = MISSING
    ckpt: Optional[str] = MISSING          # a trained model instead of training this preset (the chain's)
    seq_len: int = positive()
    sound_crops: float = ranged(ge=0, le=1)  # share of training windows centred on sound (WaveformDataset)
    monitor: str = ranged(choices=("mel_l1", "level_error_db"))  # the validation measure best.pt is chosen by
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
    ckpt: Optional[str] = MISSING          # a trained model instead of training this preset (the chain's)
    model: Dict[str, Any] = MISSING
    stats: Optional[str] = MISSING
    bn_recalibration_batches: int = counting(0)
    time_blur: Optional[List[int]] = None  # moving-average widths (frames) mixed into training mels; null: none
    optim: ClassifierOptim = field(default_factory=ClassifierOptim)
    schedule: Schedule = field(default_factory=Schedule)


# --------------------------------------------------------------- the groups without presets' schemas, and the stages
@dataclass
class PathsSchema:
    """conf/paths/default.yaml."""

    outputs: str = MISSING
    data: str = MISSING
    models: str = MISSING
    shared: str = MISSING


@dataclass
class DatasetSchema:
    """conf/dataset/*.yaml: where a data set's videos, features and split files lie."""

    name: str = MISSING
    layout: str = ranged(choices=("vas", "vggsound"))  # pipeline.data.layout
    root: str = MISSING
    videos: str = MISSING
    features: str = MISSING
    events: Optional[str] = None
    splits: Dict[str, str] = MISSING
    eval_split: str = MISSING
    classes: Optional[List[str]] = None
    meta_csv: Optional[str] = None
    # dataset=folder (pipeline/data/folder.py): what is derived from a folder of videos, and how it is cut
    data: Optional[str] = None
    clips: Optional[str] = None
    skipped: Optional[str] = None
    runs: Optional[str] = None
    shares: Dict[str, float] = field(default_factory=dict)
    clips_per_video: Optional[int] = positive(None)
    min_seconds: Optional[float] = ranged(None, gt=0)


@dataclass
class LoggerSchema:
    """conf/logger/*.yaml (pipeline/train/logger.py); the keys after `media_every` are W&B's."""

    name: str = ranged(choices=("wandb", "none"))
    mode: str = ranged(choices=("online", "offline", "disabled"))
    media_every: int = counting()
    project: Optional[str] = None
    entity: Optional[str] = None
    tags: List[str] = field(default_factory=list)


@dataclass
class ZooSchema:
    """conf/base.yaml `zoo`: released models by name (pipeline/checkpoints/zoo.py)."""

    registry: Optional[str] = None
    mirrors: Dict[str, str] = field(default_factory=dict)
    fetch: bool = MISSING


@dataclass
class ClipSchema:
    """conf/base.yaml `clip`: one 10-s clip as every stage sees it."""

    sample_rate: int = positive()
    length: int = positive()
    spec_len: int = positive()
    crop_len: int = positive()
    feat_fps: float = ranged(gt=0)
    feat_len: int = positive()
    feat_crop_len: int = positive()


@dataclass
class FeaturesSchema:
    """conf/features/*.yaml: the visual features (pipeline/extract/visual.py); `preprocessing` is the kind's own."""

    name: str = ranged(choices=("bninception", "resnet50", "efficientnet_lite0"))  # pipeline.extract.visual.KINDS
    depth: int = positive()
    fps: float = ranged(gt=0)
    feat_len: int = positive()
    feat_crop_len: int = positive()
    folders: List[str] = MISSING
    weights: str = MISSING
    width: Optional[float] = ranged(gt=0)
    batch_size: int = positive()
    preprocessing: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Checkpoint:
    """A `<model>.ckpt` key of a stage that loads the model: a file, a log folder or a released name."""

    ckpt: Optional[str] = None


@dataclass
class ClassifierCheckpoint(Checkpoint):
    stats: Optional[str] = None           # its normalisation statistics when the checkpoint holds none


@dataclass
class Stage:
    """What conf/base.yaml gives every stage."""

    paths: PathsSchema = field(default_factory=PathsSchema)
    dataset: DatasetSchema = field(default_factory=DatasetSchema)
    logger: LoggerSchema = field(default_factory=LoggerSchema)
    zoo: ZooSchema = field(default_factory=ZooSchema)
    clip: ClipSchema = field(default_factory=ClipSchema)
    force_resume: bool = MISSING
    seed: int = ranged(ge=0, lt=2 ** 32)
    run_tag: Optional[str] = None         # +run_tag=NAME: a run folder of its own (pipeline/runs/identity.py)


DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ExtractStage(Stage):
    split: Optional[str] = None
    features_dir: str = MISSING
    num_workers: int = counting()
    shard: int = counting()
    num_shards: int = positive()
    fail_on_clip_errors: bool = MISSING   # false: failed clips are listed, the stage still succeeds (the chain)


@dataclass
class ExtractMelsStage(ExtractStage):
    chain: str = ranged(choices=("original", "direct"))  # pipeline.media.mel.CHAINS
    sample_rate: int = positive()
    length: int = positive()
    spec_len: int = positive()
    silence_peak: float = ranged(ge=0)
    save_audio: bool = MISSING


@dataclass
class ExtractFeaturesStage(ExtractStage):
    features: FeaturesSchema = field(default_factory=FeaturesSchema)
    device: str = MISSING


@dataclass
class TrainStage(Stage):
    trainer: TrainerSchema = field(default_factory=TrainerSchema)


@dataclass
class TrainCodebookStage(TrainStage):
    codebook: CodebookSchema = field(default_factory=CodebookSchema)
    data: SpectrogramData = field(default_factory=SpectrogramData)
    collapse_dead_share: float = ranged(gt=0, le=1)
    vocoder: Checkpoint = field(default_factory=Checkpoint)


@dataclass
class CodebookCheckpoint:
    """train_transformer's frozen codebook."""

    ckpt: str = MISSING


@dataclass
class TrainTransformerStage(TrainStage):
    transformer: TransformerSchema = field(default_factory=TransformerSchema)
    features: FeaturesSchema = field(default_factory=FeaturesSchema)
    data: SpectrogramData = field(default_factory=SpectrogramData)
    codebook: CodebookCheckpoint = field(default_factory=CodebookCheckpoint)
    media_samples: int = counting()
    vocoder: Checkpoint = field(default_factory=Checkpoint)
    classifier: Checkpoint = field(default_factory=Checkpoint)  # transformer.monitor=samples: the class judge


@dataclass
class TrainVocoderStage(TrainStage):
    vocoder: VocoderSchema = field(default_factory=VocoderSchema)
    data: VocoderData = field(default_factory=VocoderData)


@dataclass
class TrainClassifierStage(TrainStage):
    classifier: ClassifierSchema = field(default_factory=ClassifierSchema)
    data: ClassifierData = field(default_factory=ClassifierData)


@dataclass
class SampleStage(Stage):
    sampling: SamplingSchema = field(default_factory=SamplingSchema)
    transformer: Checkpoint = field(default_factory=Checkpoint)
    model: Optional[str] = None
    codebook: Checkpoint = field(default_factory=Checkpoint)
    vocoder: Checkpoint = field(default_factory=Checkpoint)
    features: Optional[FeaturesSchema] = None  # +features=KIND: another kind than the checkpoint records
    split: str = MISSING
    samples_per_clip: int = positive()
    batch_size: int = positive()
    write_wav: bool = MISSING
    condition_shuffle: bool = MISSING
    av_benchmark: bool = MISSING
    video: Optional[str] = None
    features_file: Optional[str] = None
    feature_weights: Optional[str] = None
    class_id: Optional[int] = counting(None)
    max_seconds: Optional[float] = ranged(None, gt=0)
    device: str = MISSING
    overwrite: bool = MISSING


@dataclass
class AppStage(SampleStage):
    server_name: str = MISSING
    port: int = ranged(ge=0, le=65535)    # 0: any free port
    max_samples: int = positive()
    preview_columns: int = positive()
    classifier: ClassifierCheckpoint = field(default_factory=ClassifierCheckpoint)


@dataclass
class CodecStage(Stage):
    mode: str = ranged(choices=("encode", "decode", "roundtrip"))  # pipeline.codec.codec.MODES
    input: str = MISSING
    output: str = MISSING
    codebook: CodebookCheckpoint = field(default_factory=CodebookCheckpoint)
    vocoder: Checkpoint = field(default_factory=Checkpoint)
    window_frames: int = positive()
    overlap_frames: Optional[int] = counting(None)
    full_last_window: bool = MISSING
    batch_size: int = positive()
    device: Optional[str] = None
    num_threads: Optional[int] = positive(None)


@dataclass
class EvaluateStage(Stage):
    samples_dir: str = MISSING
    split: str = MISSING
    reals: str = ranged(choices=("all", "sampled"))
    classifier: ClassifierCheckpoint = field(default_factory=ClassifierCheckpoint)
    batch_size: int = positive()
    crop_len: int = positive()
    num_workers: int = counting()
    device: str = MISSING
    metrics_file: str = MISSING
    isc_splits: int = positive()
    kid_subset_size: Optional[int] = positive()
    degenerate_metrics: str = ranged(choices=("skip", "compute"))
    min_samples: int = positive()
    shuffled_samples_dir: Optional[str] = None
    codebook: Checkpoint = field(default_factory=Checkpoint)
    vocoder: Checkpoint = field(default_factory=Checkpoint)
    vocoder_clips: int = positive()
    train_split: str = MISSING
    events_file: Optional[str] = None
    report: bool = MISSING
    report_file: str = MISSING
    report_clips: int = counting()


@dataclass
class DownloadStage(Stage):
    what: Any = MISSING                   # a name, group or pattern, or a list of them; `list`
    keep_archives: bool = MISSING
    retries: int = counting()
    timeout_s: float = ranged(gt=0)
    progress: bool = MISSING


SUBMIT = ("local", "slurm")  # slurm: each step a SLURM job (pipeline/chain/slurm.py); `slurm` holds their resources
ACTIONS = ("run", "status")


@dataclass
class PaperTableStage(Stage):
    table: str = MISSING                  # the registry's tables (pipeline/checkpoints/zoo.yaml), checked with its rows
    rows: Any = MISSING                   # all, or a list of row names
    samples_per_clip: Optional[int] = positive(None)
    classifier: str = MISSING
    stats: str = MISSING
    eval_batch_size: int = positive()
    degenerate_metrics: str = ranged(choices=("skip", "compute"))
    device: str = MISSING
    work_dir: str = MISSING
    out: str = MISSING
    submit: str = ranged(choices=SUBMIT)
    action: str = ranged(choices=ACTIONS)
    slurm: Dict[str, Any] = field(default_factory=dict)  # conf/slurm/default.yaml with the site's own keys: open


@dataclass
class ChainStage(Stage):
    """conf/chain.yaml: a folder of videos to trained models, samples and metrics (pipeline/chain/)."""

    codebook: CodebookSchema = field(default_factory=CodebookSchema)
    transformer: TransformerSchema = field(default_factory=TransformerSchema)
    vocoder: VocoderSchema = field(default_factory=VocoderSchema)
    classifier: ClassifierSchema = field(default_factory=ClassifierSchema)
    features: FeaturesSchema = field(default_factory=FeaturesSchema)
    trainer: TrainerSchema = field(default_factory=TrainerSchema)
    sampling: SamplingSchema = field(default_factory=SamplingSchema)
    slurm: Dict[str, Any] = field(default_factory=dict)
    action: str = ranged(choices=ACTIONS)
    submit: str = ranged(choices=SUBMIT)
    transformer_checkpoint: str = ranged(choices=("best", "last"))
    samples_per_clip: Optional[int] = positive(None)
    sample_batch_size: int = positive()
    mel_chain: str = ranged(choices=("original", "direct"))
    num_workers: int = counting()


@dataclass
class FolderDatasetStage(Stage):
    features: FeaturesSchema = field(default_factory=FeaturesSchema)
    part: str = ranged(choices=("index", "splits"))


@dataclass
class DemoGrid:
    spec_len: int = positive()
    crop_len: int = positive()


@dataclass
class MakeDemoDataStage(Stage):
    num_classes: int = positive()
    clips_per_class: int = positive()
    valid_share: float = share()
    seconds: float = ranged(gt=0)
    events_per_clip: List[int] = positive()
    size: int = ranged(ge=2)
    fps: int = positive()
    sample_rate: int = positive()
    background: float = ranged(ge=0)
    grid: DemoGrid = field(default_factory=DemoGrid)
    overwrite: bool = MISSING


# the whole config of each stage (conf/<stage>.yaml), checked by pipeline.config.check.config_problems
STAGE_SCHEMAS = {"extract_mels": ExtractMelsStage, "extract_features": ExtractFeaturesStage,
                 "train_codebook": TrainCodebookStage, "train_transformer": TrainTransformerStage,
                 "train_vocoder": TrainVocoderStage, "train_classifier": TrainClassifierStage, "sample": SampleStage,
                 "app": AppStage, "codec": CodecStage, "evaluate": EvaluateStage, "download": DownloadStage,
                 "paper_table": PaperTableStage, "make_demo_data": MakeDemoDataStage, "chain": ChainStage,
                 "folder_dataset": FolderDatasetStage}


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
