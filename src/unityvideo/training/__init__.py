"""Training room: configs, the trainer (one process or torchrun with DDP / FSDP2), checkpoints, logs."""

from .config import Config, DataConfig, ModelConfig, OptimConfig, Stage, TrainConfig, WorldData, load_config
from .trainer import NonFiniteLossError, Trainer, train

__all__ = ["Config", "DataConfig", "ModelConfig", "NonFiniteLossError", "OptimConfig", "Stage", "TrainConfig",
           "Trainer", "WorldData", "load_config", "train"]
