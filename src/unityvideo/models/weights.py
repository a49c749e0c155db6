"""Reading and copying model weights: our own small loader rather than diffusers' `from_pretrained`, so
that every error names the file, what was expected and the fix; big models are built on the meta device
(no random init) and filled from the files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn
from safetensors import safe_open

def model_folder(folder: str | Path, subfolder: str | None = None) -> Path:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder; pass a local folder with config.json and "
                                "*.safetensors (nothing is downloaded)")
    if subfolder and not (folder / "config.json").exists() and (folder / subfolder / "config.json").exists():
        return folder / subfolder
    return folder


def read_config(folder: Path) -> dict:
    path = folder / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; a model folder needs config.json next to its safetensors")
    return json.loads(path.read_text())


def keep_fp32(model: nn.Module) -> None:
    """Keep the small precision-sensitive parts in fp32 under a low-precision dtype, as diffusers does
    for Wan (`_keep_in_fp32_modules`): timestep embedder, modulation tables, norms."""
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] in ("time_embedder", "norm1", "norm2", "norm3"):
            module.float()
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] in ("scale_shift_table", "modality_table"):
            param.data = param.data.float()


def weight_files(folder: Path) -> dict[str, Path]:
    """Map tensor name -> safetensors file, from an index json or a single file."""
    indexes = sorted(folder.glob("*.safetensors.index.json"))
    if indexes:
        index = indexes[0]
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not weight_map:
            raise ValueError(f"{index}: no 'weight_map'; re-export the folder with save_pretrained")
        files = {name: folder / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.exists():
                raise FileNotFoundError(f"{shard}: missing shard listed in {index.name}; copy the complete "
                                        "folder (every shard named in the index)")
        return files
    singles = sorted(folder.glob("*.safetensors"))
    if len(singles) != 1:
        found = [p.name for p in singles] or "none"
        raise FileNotFoundError(f"{folder}: expected one *.safetensors file or a *.safetensors.index.json, "
                                f"found {found}")
    with open_weights(singles[0]) as f:
        return {name: singles[0] for name in f.keys()}


def open_weights(path: Path):
    """safe_open, with an error that names the file when it is truncated or not safetensors at all."""
    try:
        return safe_open(path, framework="pt")
    except Exception as err:  # safetensors raises its own SafetensorError, not an OSError
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a complete safetensors file ({err}); copy or export it again") from None


def check_names(expected: Mapping, names, where: str, fix: str) -> list[str]:
    """The tensor names to copy into a module whose state dict is `expected`, or a clear error when
    some are missing or unexpected (Wan's `norm_added_q`, dropped by diffusers too, is ignored)."""
    names = [n for n in names if "norm_added_q" not in n]
    missing = sorted(set(expected) - set(names))
    unexpected = sorted(set(names) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{where}: weights do not match the model: missing {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''} ({len(missing)}), unexpected {unexpected[:5]}"
                         f"{' ...' if len(unexpected) > 5 else ''} ({len(unexpected)}); {fix}")
    return names


@torch.no_grad()
def load_weights(module: nn.Module, folder: Path) -> None:
    """Copy every tensor of a folder into `module`, strictly, with shape checks (file by file)."""
    files = weight_files(folder)
    expected = module.state_dict()
    check_names(expected, files, f"{folder} (config.json)", "is this the right kind of folder (from_backbone: "
                 "a Wan T2V transformer, from_pretrained: a UnityVideo save)?")
    for path in sorted(set(files.values())):
        with open_weights(path) as f:
            for name in f.keys():
                if name not in expected:
                    continue
                tensor = f.get_tensor(name)
                if tensor.shape != expected[name].shape:
                    raise ValueError(f"{path}: tensor {name!r} has shape {tuple(tensor.shape)} but config.json "
                                     f"implies {tuple(expected[name].shape)}; the config and weights disagree "
                                     "(fix config.json or re-export the folder)")
                expected[name].copy_(tensor)


@torch.no_grad()
def copy_weights(module: nn.Module, tensors: Mapping[str, torch.Tensor], where: str) -> None:
    """Copy an in-memory Wan state dict (diffusers' names) into `module`, strictly, with shape checks."""
    expected = module.state_dict()
    for name in check_names(expected, tensors, where, "is it a text-to-video Wan transformer?"):
        if tensors[name].shape != expected[name].shape:
            raise ValueError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, the model expects "
                             f"{tuple(expected[name].shape)}")
        expected[name].copy_(tensors[name])
