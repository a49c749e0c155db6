"""Training configs: dataclasses, loaded from YAML and overridden with dotted `key=value` pairs.

    config = load_config("configs/tiny-world.yaml", ["optim.lr=3e-4", "train.batch_size=16"])

Unknown keys are errors that name the key and list the valid ones. Values in overrides are parsed
as YAML (`train.steps=10`, `routing.tasks={control: 1}`, `data.world=null`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..data.files import read_utf8
from ..flow import TASKS, RoutingConfig, TimestepSampler
from ..modalities import STAGE1_MODALITIES
from ..models.checkpoint import ASSET_MODES, TEXT_CONVENTIONS
from ..models.codec import LATENT_NORMS
from ..models.lora import LoraSettings
from ..models.transformer import PRESETS

PARALLEL_MODES = ("auto", "none", "ddp", "fsdp")
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass
class WorldData:
    """A procedural world to render (once) into `cache` (default: DIR/world inside the run folder)."""

    clips: int = 64
    val_clips: int = 8
    frames: int = 8
    size: tuple[int, int] = (32, 32)
    seed: int = 0
    fps: int = 8
    cache: str | None = None


@dataclass
class TrainCrop:
    """A random window of every training sample at its native resolution (nothing is resampled): fewer
    tokens per step with the same pixels per person, so small structure (joints, body parts) is learned
    at the scale it is evaluated at, for a fraction of the compute. Validation and inference see whole
    clips. frames / size: the window's length and (H, W); None keeps the sample's own."""

    frames: int | None = None
    size: tuple[int, int] | None = None


@dataclass
class DataConfig:
    """Where clips come from: a `manifest` (CSV/JSONL) or a `world` to render; `val_manifest`
    (default: the world's test split, or the manifest's rows with split == "test")."""

    manifest: str | None = None
    world: WorldData | None = None
    val_manifest: str | None = None
    frames: int = 8
    size: tuple[int, int] | None = (32, 32)
    frame_stride: int = 1
    random_offset: bool = False
    cache_in_memory: bool = True      # keep decoded clips in memory (small datasets; no random offsets)
    num_workers: int = 0
    latent_cache: str | None = None   # folder of precomputed latents (computed and stored on first use)
    text_cache: str | None = None     # folder of precomputed text features (TextEncoder disk cache)
    train_crop: TrainCrop | None = None


@dataclass
class ModelConfig:
    """The transformer: a `preset` (+ `overrides`), a Wan `backbone` folder, or `init` from a
    UnityVideo checkpoint; plus the text encoder and latent codec it works with."""

    preset: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    backbone: str | None = None
    init: str | None = None
    text_encoder: str = "minilm"
    # how prompts reach the transformer (models.text.TEXT_CONVENTIONS): "auto" = model.init's, else the
    # encoder's own (umT5: zero_padded, Wan's: 512 tokens, no mask; MiniLM: masked)
    text_convention: str = "auto"
    codec: str = "pixel4"
    codec_folder: str | None = None
    # "per_stream": each stream's latents scaled to zero mean, unit std (stats measured on the training
    # clips at the start, kept with the run and the export; models.codec.LatentNorm); "none": as encoded
    latent_norm: str = "none"
    # LoRA fine-tuning (peft): the backbone frozen, adapters on `targets` plus the UnityVideo parts trained;
    # the export is an adapter folder on top of model.backbone / model.init (models/lora.py). null = full.
    lora: LoraSettings | None = None


@dataclass
class Stage:
    """One curriculum stage: its length, modalities (with sampling weights), optional task
    probabilities and data overriding the run's."""

    name: str = "stage"
    steps: int = 100
    # the curriculum's first stage: the pixel-aligned modalities (the registry's `pixel_aligned` flag)
    modalities: dict[str, float] = field(default_factory=lambda: {m: 1.0 for m in STAGE1_MODALITIES})
    tasks: dict[str, float] | None = None
    data: DataConfig | None = None


@dataclass
class OptimConfig:
    lr: float = 1e-4                  # backbone
    unity_lr: float | None = None     # the new UnityVideo parameters (AdaLN table, experts); None = lr
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1         # cosine decays to lr * min_lr_ratio at the last step
    grad_clip: float = 1.0            # max grad norm (0 = no clipping)
    ema_decay: float = 0.999          # 0 = no EMA
    ema_warmup: bool = True           # decay = min(ema_decay, (1 + step) / (10 + step))


@dataclass
class TrainConfig:
    run_dir: str = "runs/tiny-world"
    seed: int = 0
    batch_size: int = 8               # global batch (all processes, all accumulation steps)
    micro_batch_size: int | None = None  # per process and forward; None = batch_size / processes
    parallel: str = "auto"            # auto: fsdp on GPU if the model is big, else ddp; none = 1 process
    fsdp_min_params: int = 500_000_000  # auto picks FSDP2 at or above this many parameters
    activation_checkpointing: bool = False
    compile: bool = False             # torch.compile the per-block function (model.compile_blocks)
    precision: str = "auto"           # auto = bf16 on GPU, fp32 on CPU
    log_every: int = 10
    eval_every: int = 100
    eval_timesteps: tuple[float, ...] = (0.25, 0.5, 0.75)
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    export_every: int = 0             # also export EMA weights every N steps (0 = only at the end)
    # how an export holds a local text encoder / VAE folder: "reference" (a path relative to the export),
    # "copy" (a copy inside it: self-contained, as large as the folders) or "link" (a symbolic link inside it)
    export_assets: str = "reference"
    max_nonfinite: int = 10           # consecutive NaN/inf steps before the run aborts
    progress: bool = True
    tensorboard: bool = True


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    stages: list[Stage] = field(default_factory=lambda: [Stage()])
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    @property
    def total_steps(self) -> int:
        return sum(s.steps for s in self.stages)

    def stage_at(self, step: int) -> tuple[int, Stage]:
        """The curriculum stage that step `step` (0-based) belongs to."""
        end = 0
        for i, stage in enumerate(self.stages):
            end += stage.steps
            if step < end:
                return i, stage
        return len(self.stages) - 1, self.stages[-1]

    def stage_routing(self, stage: Stage) -> RoutingConfig:
        """The routing config of a stage: the run's, with the stage's modalities and tasks."""
        return dataclasses.replace(self.routing, modalities=dict(stage.modalities),
                                   tasks=dict(stage.tasks or self.routing.tasks))

    def stage_data(self, stage: Stage) -> DataConfig:
        return stage.data or self.data

    @property
    def modalities(self) -> list[str]:
        """Every modality some stage learns, in registry order."""
        from ..modalities import MODALITY_NAMES
        used = {m for s in self.stages for m, w in s.modalities.items() if w > 0}
        return [m for m in MODALITY_NAMES if m in used]

    def validate(self) -> None:
        t = self.train
        if t.parallel not in PARALLEL_MODES:
            raise ValueError(f"train.parallel={t.parallel!r}; choose one of {PARALLEL_MODES}")
        if self.model.text_convention not in ("auto", *TEXT_CONVENTIONS):
            raise ValueError(f"model.text_convention={self.model.text_convention!r}; choose auto or one of "
                             f"{TEXT_CONVENTIONS}")
        if t.export_assets not in ASSET_MODES:
            raise ValueError(f"train.export_assets={t.export_assets!r}; choose one of {ASSET_MODES}")
        if t.precision not in PRECISIONS:
            raise ValueError(f"train.precision={t.precision!r}; choose one of {PRECISIONS}")
        if self.model.latent_norm not in LATENT_NORMS:
            raise ValueError(f"model.latent_norm={self.model.latent_norm!r}; choose one of {LATENT_NORMS}")
        if not self.stages:
            raise ValueError("stages: at least one stage is needed")
        if self.model.backbone is None and self.model.init is None and self.model.preset not in PRESETS:
            raise ValueError(f"model.preset={self.model.preset!r}; choose one of {sorted(PRESETS)} (or set "
                             "model.backbone / model.init)")
        for i, stage in enumerate(self.stages):
            if stage.steps < 1:
                raise ValueError(f"stages[{i}].steps={stage.steps} must be >= 1")
            self.stage_routing(stage)  # checks names and weights
            data = self.stage_data(stage)
            if (data.manifest is None) == (data.world is None):
                raise ValueError(f"stages[{i}] data: set exactly one of data.manifest and data.world")
        _check_numbers(self)


# (key, lowest, highest, the lowest itself allowed): every number a run reads, checked before any work
# (a nan learning rate would train, and export, nan weights; a zero log interval divides by zero).
_NUMBER_RULES = (
    ("optim.lr", 0, None, False), ("optim.unity_lr", 0, None, False), ("optim.eps", 0, None, False),
    ("optim.weight_decay", 0, None, True), ("optim.warmup_steps", 0, None, True),
    ("optim.min_lr_ratio", 0, 1, True), ("optim.grad_clip", 0, None, True), ("optim.ema_decay", 0, 1, True),
    ("train.batch_size", 1, None, True), ("train.micro_batch_size", 1, None, True),
    ("train.fsdp_min_params", 0, None, True), ("train.log_every", 1, None, True),
    ("train.eval_every", 0, None, True), ("train.checkpoint_every", 0, None, True),
    ("train.keep_checkpoints", 0, None, True), ("train.export_every", 0, None, True),
    ("train.max_nonfinite", 0, None, True),
)
_DATA_RULES = (("frames", 1, None, True), ("frame_stride", 1, None, True), ("num_workers", 0, None, True))
_WORLD_RULES = (("clips", 1, None, True), ("val_clips", 0, None, True), ("frames", 1, None, True),
                ("fps", 1, None, True))


def _check_number(key: str, value: Any, low: float | None, high: float | None, low_ok: bool) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{key}={value!r} must be a finite number")
    if low is not None and (value < low or (value == low and not low_ok)):
        raise ValueError(f"{key}={value} must be {'>=' if low_ok else '>'} {low}")
    if high is not None and value > high:
        raise ValueError(f"{key}={value} must be <= {high}")


def _check_train_crop(where: str, data: DataConfig) -> None:
    crop = data.train_crop
    if crop is None:
        return
    _check_number(f"{where}.train_crop.frames", crop.frames, 1, data.frames, True)
    for i, side in enumerate(crop.size or ()):
        _check_number(f"{where}.train_crop.size[{i}]", side, 1, None, True)
        if data.size and side > data.size[i]:
            raise ValueError(f"{where}.train_crop.size={list(crop.size)} must fit inside {where}.size="
                             f"{list(data.size)}: the window is cut from the sample, never resampled")
    if crop.size is not None and data.size is None:
        raise ValueError(f"{where}.train_crop.size needs {where}.size (the sample's size the window is cut from)")


def _check_numbers(config: "Config") -> None:
    for key, low, high, low_ok in _NUMBER_RULES:
        section, name = key.split(".")
        _check_number(key, getattr(getattr(config, section), name), low, high, low_ok)
    if config.optim.ema_decay >= 1:
        raise ValueError(f"optim.ema_decay={config.optim.ema_decay} must be < 1 (0 = no EMA)")
    for i, beta in enumerate(config.optim.betas):
        _check_number(f"optim.betas[{i}]", beta, 0, None, True)
        if beta >= 1:
            raise ValueError(f"optim.betas[{i}]={beta} must be < 1")
    lora = config.model.lora
    if lora is not None:
        _check_number("model.lora.rank", lora.rank, 1, None, True)
        _check_number("model.lora.alpha", lora.alpha, 0, None, False)
        _check_number("model.lora.dropout", lora.dropout, 0, 1, True)
        if lora.dropout >= 1 or not lora.targets:
            raise ValueError("model.lora: dropout must be < 1 and targets must name at least one layer")
    for t in config.train.eval_timesteps:
        _check_number("train.eval_timesteps", t, 0, 1, False)
    datas = [("data", config.data)] + [(f"stages.{i}.data", s.data) for i, s in enumerate(config.stages) if s.data]
    for where, data in datas:
        for name, low, high, low_ok in _DATA_RULES:
            _check_number(f"{where}.{name}", getattr(data, name), low, high, low_ok)
        for i, side in enumerate(data.size or ()):
            _check_number(f"{where}.size[{i}]", side, 1, None, True)
        _check_train_crop(where, data)
        if data.world is not None:
            for name, low, high, low_ok in _WORLD_RULES:
                _check_number(f"{where}.world.{name}", getattr(data.world, name), low, high, low_ok)
            for i, side in enumerate(data.world.size):
                _check_number(f"{where}.world.size[{i}]", side, 1, None, True)


# ----- loading ------------------------------------------------------------------------------------


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML config (or the defaults when path is None) and apply dotted overrides."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such config file (see configs/ for examples)")
        raw = _parse_yaml(read_utf8(path), str(path)) or {}
        if not isinstance(raw, dict):
            raise ValueError(f"{path}: a config is a YAML mapping of sections, got {type(raw).__name__}")
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"override {item!r} must look like section.key=value")
        _set_dotted(raw, key.strip(), _parse_yaml(value, f"override {item!r}"))
    try:
        config = from_dict(Config, raw, where="")
        config.validate()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path or 'config'}: {err}") from None
    return config


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{where}: not valid YAML{at}: {problem}") from None


def _set_dotted(raw: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node: Any = raw
    for depth, part in enumerate(parts):
        where = ".".join(parts[:depth + 1])
        if isinstance(node, list):
            if not part.isdigit():
                raise ValueError(f"override {key}: {'.'.join(parts[:depth])} is a list; {part!r} is not an index "
                                 f"(0 to {len(node) - 1})")
            if int(part) >= len(node):
                count = f"{len(node)} entr{'y' if len(node) == 1 else 'ies'}"
                raise ValueError(f"override {key}: {'.'.join(parts[:depth])} has {count} (indices 0 to "
                                 f"{len(node) - 1}), so {where} does not exist")
            if depth == len(parts) - 1:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if not isinstance(node, dict):
            raise ValueError(f"override {key}: {'.'.join(parts[:depth])} is a value, not a section")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]


def from_dict(cls, raw: Any, where: str):
    """Build dataclass `cls` from a mapping, recursively, rejecting unknown keys."""
    if isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ValueError(f"{where or 'config'}: expected a mapping for {cls.__name__}, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ValueError(f"unknown key {key!r}; valid keys{' in ' + where if where else ''} are {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {name: _convert(hints[name], value, f"{where}.{name}" if where else name) for name, value in raw.items()}
    return cls(**kwargs)


def _convert(tp, value: Any, where: str):
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0]
        return tuple(_convert(item, v, where) for v in value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is float and not isinstance(value, bool):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{where}: expected a number, got {value!r}") from None
    if tp in (int, str, bool) and not isinstance(value, tp):
        if tp is str and isinstance(value, (int, float)):
            return str(value)
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def to_dict(config: Any) -> Any:
    """A plain, YAML-safe dict of a config (tuples as lists)."""
    if dataclasses.is_dataclass(config):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {k: to_dict(v) for k, v in config.items()}
    return config


def dump_config(config: Config) -> str:
    return yaml.safe_dump(to_dict(config), sort_keys=False)


__all__ = ["Config", "DataConfig", "ModelConfig", "OptimConfig", "RoutingConfig", "Stage", "TASKS",
           "TimestepSampler", "TrainConfig", "TrainCrop", "WorldData", "dump_config", "from_dict", "load_config", "to_dict"]
