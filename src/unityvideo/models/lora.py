"""LoRA fine-tuning of the Wan backbone with peft, and the adapter folders it writes.

A LoRA run freezes the backbone (`UnityVideoTransformer.backbone`) and trains low-rank adapters on
its attention and feed-forward projections, plus every UnityVideo part in full: the AdaLN modality
table and each modality expert's patch embedding and output head (they do not exist in the base
model, so there is nothing to adapt). An adapter folder holds only what was trained:

    DIR/adapter_config.json        peft's LoraConfig (rank, alpha, dropout, target modules)
    DIR/adapter_model.safetensors  backbone.<module>.lora_A/B.weight + the UnityVideo parts' tensors

so it is megabytes beside a backbone of gigabytes. It applies to the model it was trained on (the base
a checkpoint's unityvideo.json names) and can be fused into its weights (`fuse_lora`), which is exact:
the fused model computes what the adapted one does, without the extra matmuls.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

ADAPTER_NAME = "default"  # peft's default adapter name (stripped from the saved tensor names)
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Module-name suffixes in every Wan block: self- and cross-attention projections, feed-forward in and out.
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "ffn.net.0.proj", "ffn.net.2")


@dataclass
class LoraSettings:
    """`model.lora` of a training config. alpha / rank scales the update (peft's `lora_alpha`)."""

    rank: int = 16
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def peft_config(self):
        LoraConfig = _peft().LoraConfig
        return LoraConfig(r=self.rank, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=list(self.targets), init_lora_weights=True)


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError("LoRA needs peft: pip install 'unityvideo[lora]' (or pip install peft)") from None
    return peft


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Put fresh LoRA adapters (B = 0: the model's output is unchanged) on the backbone's target
    modules and freeze everything else of the backbone. Returns the model."""
    if has_lora(model):
        raise ValueError("the model already has LoRA adapters (fuse_lora / load_adapter was applied)")
    _check_targets(model.backbone, settings.targets)
    model.backbone.requires_grad_(False)
    model.backbone.add_adapter(settings.peft_config(), adapter_name=ADAPTER_NAME)  # peft leaves only lora_* trainable
    for name, param in model.named_parameters():
        if not name.startswith("backbone."):
            param.requires_grad_(True)
    return model


def _check_targets(backbone: nn.Module, targets) -> None:
    names = [n for n, m in backbone.named_modules() if isinstance(m, nn.Linear)]
    for target in targets:
        if not any(n == target or n.endswith("." + target) for n in names):
            examples = sorted({n.split(".", 2)[-1] for n in names if n.startswith("blocks.0.")})
            raise ValueError(f"model.lora.targets: {target!r} names no linear layer of the backbone; the "
                             f"layers of a block are {examples}")


def has_lora(model: nn.Module) -> bool:
    return any(".lora_A." in name for name, _ in model.named_parameters())


def trained_names(model: nn.Module) -> list[str]:
    """Parameter names a LoRA run trains (as in `model.named_parameters()`)."""
    return [n for n, p in model.named_parameters() if p.requires_grad]


def adapter_tensors(named: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What an adapter file holds, from a model's `state_dict()` (or its trained parameters): the LoRA
    matrices, named as peft saves them (without the adapter name), and every UnityVideo part."""
    out = {}
    for name, tensor in named.items():
        if ".lora_A." in name or ".lora_B." in name:
            out[name.replace(f".{ADAPTER_NAME}.", ".")] = tensor
        elif not name.startswith("backbone."):
            out[name] = tensor
    return out


def save_adapter(named: dict[str, torch.Tensor], settings: LoraSettings, folder: str | Path) -> Path:
    """Write `adapter_tensors(named)` and the peft config into `folder`."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in adapter_tensors(named).items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    config = settings.peft_config().to_dict()
    config["target_modules"] = sorted(config["target_modules"])
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2, default=str) + "\n")
    return folder


def read_adapter_settings(folder: str | Path) -> LoraSettings:
    path = Path(folder) / ADAPTER_CONFIG
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a LoRA adapter folder (expected "
                                f"{ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    try:
        raw = json.loads(path.read_text())
        return LoraSettings(rank=int(raw["r"]), alpha=float(raw["lora_alpha"]),
                            dropout=float(raw.get("lora_dropout", 0.0)), targets=list(raw["target_modules"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a peft LoRA config ({err!r}); save the adapter again") from None


@torch.no_grad()
def load_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Add the adapter saved in `folder` to `model` (a model built like the one it was trained on) and
    load its tensors, strictly: every LoRA matrix and UnityVideo part present, with matching shapes."""
    folder = Path(folder)
    settings = read_adapter_settings(folder)
    path = folder / ADAPTER_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the adapter folder has a config but no weights")
    add_lora(model, settings)
    saved = load_file(str(path))
    expected = adapter_tensors(model.state_dict())  # views of the parameters: copy_ loads them
    missing, unexpected = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: the adapter does not fit this model: missing {missing[:3]} ({len(missing)}), "
                         f"unexpected {unexpected[:3]} ({len(unexpected)}); was it trained on another base "
                         "or with other modalities?")
    for name, target in expected.items():
        if saved[name].shape != target.shape:
            raise ValueError(f"{path}: {name} has shape {tuple(saved[name].shape)}, the model expects "
                             f"{tuple(target.shape)} (another rank or base model?)")
        target.copy_(saved[name])
    return model


def fuse_lora(model: nn.Module, scale: float = 1.0) -> None:
    """Add scale * B A into each adapted layer's weight (peft's merge; `unfuse_lora` undoes it)."""
    model.backbone.fuse_lora(lora_scale=scale)


def unfuse_lora(model: nn.Module) -> None:
    model.backbone.unfuse_lora()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fuse the adapters and drop the LoRA layers: a plain UnityVideoTransformer (save_pretrained
    writes a normal checkpoint of it)."""
    if has_lora(model):
        fuse_lora(model)
        model.backbone.unload_lora()
        model.requires_grad_(True)  # as a freshly built model (add_lora froze the backbone)
    return model


# ----- checkpoint folders -------------------------------------------------------------------------


def load_transformer(folder: str | Path, torch_dtype: torch.dtype | None = None) -> nn.Module:
    """The transformer of a UnityVideo checkpoint folder: its own weights, or, for a LoRA export, its
    base model with the adapter added (unfused; `fuse_lora` fuses it). A bare transformer folder
    (config.json + safetensors) loads too."""
    from .checkpoint import SPEC_NAME, TRANSFORMER_DIR, load_checkpoint_spec, resolve_asset
    from .transformer import UnityVideoTransformer

    folder = Path(folder)
    if not (folder / SPEC_NAME).is_file():
        bare = folder / TRANSFORMER_DIR if (folder / TRANSFORMER_DIR).is_dir() else folder
        return UnityVideoTransformer.from_pretrained(bare, torch_dtype=torch_dtype)
    spec = load_checkpoint_spec(folder)
    if spec.adapter is None:
        return UnityVideoTransformer.from_pretrained(folder / TRANSFORMER_DIR, torch_dtype=torch_dtype)
    base = Path(resolve_asset(folder, spec.base, "base model"))
    config = json.loads((folder / TRANSFORMER_DIR / "config.json").read_text())
    model = _base_model(base, config, torch_dtype)
    return load_adapter(model, folder / spec.adapter)


def _base_model(base: Path, config: dict, torch_dtype: torch.dtype | None) -> nn.Module:
    """The model an adapter was trained on: a UnityVideo checkpoint (a LoRA one is fused first) or a
    Wan backbone given the adapter's UnityVideo config."""
    from .transformer import BACKBONE_KEYS, UnityVideoTransformer

    wan_config = base / "transformer" / "config.json" if (base / "transformer" / "config.json").is_file() \
        else base / "config.json"
    if wan_config.is_file() and json.loads(wan_config.read_text()).get("_class_name") == "WanTransformer3DModel":
        unity = {k: v for k, v in config.items() if not k.startswith("_") and k not in BACKBONE_KEYS}
        return UnityVideoTransformer.from_backbone(base, torch_dtype=torch_dtype, **unity)
    return merge_and_unload(load_transformer(base, torch_dtype))
