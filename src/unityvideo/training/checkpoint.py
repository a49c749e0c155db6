"""Training checkpoints: the full state of a run, written atomically, read without unpickling.

    RUN/checkpoints/step-000100/
        state.safetensors   every tensor: model, EMA, optimizer state (full, unsharded)
        state.json          everything else: step, scheduler, optimizer hyper-parameters, counters,
                            where each tensor goes (the tree of the state with tensor placeholders)
        rng-rank<r>.safetensors   each process's RNG states (torch CPU / CUDA, numpy, python)
    RUN/checkpoints/latest  the name of the newest complete checkpoint

A checkpoint is written into `.step-000100.tmp` and renamed when complete, so a run killed at any
moment (even SIGKILL) leaves only complete checkpoints behind. Model and optimizer states are the
full (unsharded) ones from `torch.distributed.checkpoint.state_dict`, so a checkpoint written by N
processes under DDP or FSDP2 resumes on any number of processes and either strategy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict)

CHECKPOINTS = "checkpoints"
LATEST = "latest"
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def checkpoint_name(step: int) -> str:
    return f"step-{step:06d}"


# ----- tensors <-> (safetensors, json) ------------------------------------------------------------


def split_tensors(tree: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """Replace every tensor of a nested dict/list by {"__tensor__": key}, collecting it in `tensors`."""
    if isinstance(tree, torch.Tensor):
        tensors[path] = tree.detach().contiguous().cpu()
        return {"__tensor__": path}
    if isinstance(tree, dict):
        return {str(k): split_tensors(v, tensors, f"{path}/{k}") for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [split_tensors(v, tensors, f"{path}/{i}") for i, v in enumerate(tree)]
    return tree


def join_tensors(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, dict):
        if set(tree) == {"__tensor__"}:
            return tensors[tree["__tensor__"]]
        return {k: join_tensors(v, tensors) for k, v in tree.items()}
    if isinstance(tree, list):
        return [join_tensors(v, tensors) for v in tree]
    return tree


# ----- RNG ----------------------------------------------------------------------------------------


def _py_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def rng_state_numpy() -> dict[str, torch.Tensor]:
    """numpy's legacy global state as tensors (no pickle)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"numpy_keys": torch.from_numpy(keys.astype(np.int64)),
            "numpy_meta": torch.tensor([pos, has_gauss], dtype=torch.int64),
            "numpy_gauss": torch.tensor([gauss], dtype=torch.float64)}


def _numpy_state(tensors) -> tuple:
    keys, meta, gauss = tensors
    return ("MT19937", keys.numpy().astype(np.uint32), int(meta[0]), int(meta[1]), float(gauss[0]))


def save_rng(folder: Path, rank: int) -> None:
    state = {"torch": torch.get_rng_state(),
             "python": torch.tensor(list(json.dumps(_py_state()).encode()), dtype=torch.uint8),
             **rng_state_numpy()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    save_file(state, str(folder / f"rng-rank{rank}.safetensors"))


def load_rng(folder: Path, rank: int) -> None:
    path = folder / f"rng-rank{rank}.safetensors"
    if not path.exists():  # resumed on more processes than wrote the checkpoint: keep fresh RNGs
        return
    state = load_file(path)
    torch.set_rng_state(state["torch"])
    version, internal, gauss = json.loads(bytes(state["python"].tolist()).decode())
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(_numpy_state((state["numpy_keys"], state["numpy_meta"], state["numpy_gauss"])))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


# ----- save / load --------------------------------------------------------------------------------


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(run_dir: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    ema_state: dict[str, torch.Tensor] | None, extra: dict, keep: int,
                    good_step: int | None = None, only: set[str] | None = None) -> Path:
    """Write the full training state at `step`; every process must call it (collectives inside).
    keep: how many checkpoints to keep (0 = all); the newest one at or before `good_step` (a state
    the run has taken a finite step from) is kept as well, whatever `keep` says. only: the model
    tensors to write (a LoRA run's trained ones; its frozen base is rebuilt from its folder)."""
    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_name(step)
    tmp = root / f".{checkpoint_name(step)}.tmp"
    rank = _rank()
    model_state = get_model_state_dict(model, options=FULL)
    if only is not None:
        model_state = {k: v for k, v in model_state.items() if k in only}
    optim_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    save_rng(tmp, rank)
    if rank == 0:
        tensors: dict[str, torch.Tensor] = {}
        tree = split_tensors({"model": model_state, "optimizer": optim_state, "ema": ema_state or {}}, tensors)
        save_file(tensors, str(tmp / "state.safetensors"))
        (tmp / "state.json").write_text(json.dumps({"step": step, **extra, "partial_model": only is not None,
                                                    "tree": tree}))
    _barrier()
    if rank == 0:
        _fsync_folder(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _write_atomic(root / LATEST, final.name)
        _prune(root, keep, good_step)
    _barrier()
    return final


def _fsync_folder(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoint_step(folder: Path) -> int:
    return int(folder.name.removeprefix("step-"))


def _prune(root: Path, keep: int, good_step: int | None) -> None:
    if keep <= 0:
        return
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    good = [p for p in done if good_step is not None and checkpoint_step(p) <= good_step][-1:]
    for old in done[:-keep]:
        if old not in good:
            shutil.rmtree(old, ignore_errors=True)


def last_good_checkpoint(run_dir: Path, before_step: int) -> Path | None:
    """The newest complete checkpoint of a run written before step `before_step` (None: none)."""
    done = sorted(p for p in (Path(run_dir) / CHECKPOINTS).glob("step-*") if (p / "state.json").exists())
    done = [p for p in done if checkpoint_step(p) < before_step]
    return done[-1] if done else None


def point_latest_at(folder: Path) -> None:
    """Make `folder` the checkpoint a plain --resume of its run picks up."""
    _write_atomic(folder.parent / LATEST, folder.name)


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the latest complete one of a run folder / its checkpoints folder."""
    path = Path(path)
    if (path / "state.json").exists():
        return path
    for root in (path / CHECKPOINTS, path):
        latest = root / LATEST
        if latest.exists() and (root / latest.read_text().strip() / "state.json").exists():
            return root / latest.read_text().strip()
        done = sorted(p for p in root.glob("step-*") if (p / "state.json").exists())
        if done:
            return done[-1]
    raise FileNotFoundError(f"{path}: no complete checkpoint (expected RUN/checkpoints/step-N/state.json); "
                            "start without --resume, or point --resume at a run or checkpoint folder")


def load_checkpoint(folder: Path, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer) -> tuple[dict, dict[str, torch.Tensor]]:
    """Load model and optimizer state in place (every process); returns (json state, EMA tensors)."""
    meta = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    tree = join_tensors(meta.pop("tree"), tensors)
    partial = meta.get("partial_model", False)
    if partial:  # a LoRA checkpoint: every trained tensor must be in it (the rest is the frozen base)
        lost = sorted(n for n, p in model.named_parameters() if p.requires_grad and n not in tree["model"])
        if lost:
            raise ValueError(f"{folder}: holds only a LoRA run's trained tensors, and not {lost[:3]} "
                             f"({len(lost)}); resume with the config that wrote it (same model.lora)")
    options = StateDictOptions(full_state_dict=True, strict=not partial)
    set_model_state_dict(model, tree["model"], options=options)
    set_optimizer_state_dict(model, optimizer, _optim_types(tree["optimizer"]), options=options)
    load_rng(folder, _rank())
    return meta, tree["ema"]


def _optim_types(state: dict) -> dict:
    """JSON turned tuples (betas) into lists; torch's optimizers want them back as tuples."""
    for group in state.get("param_groups", []):
        for key, value in group.items():
            if key != "params" and isinstance(value, list):
                group[key] = tuple(value)
    return state
