"""Training room: configs, the trainer (one process or torchrun with DDP / FSDP2), checkpoints, logs.

Names are imported on first use, so `unityvideo --help` (which imports training.cli) stays fast.
"""

import importlib

_EXPORTS = {
    "Config": "config", "DataConfig": "config", "ModelConfig": "config", "OptimConfig": "config",
    "Stage": "config", "TrainConfig": "config", "WorldData": "config", "load_config": "config",
    "NonFiniteLossError": "trainer", "Trainer": "trainer", "train": "trainer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
