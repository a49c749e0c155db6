"""Weights from elsewhere into this project's checkpoint folder: Wan's original-format transformer
files, and the authors' released UnityVideo checkpoint.

The authors' model (their `UnifiedWanModel` on DiffSynth's `WanModel`, Wan2.2-TI2V-5B, 33 frames at
256x256) is a special case of ours, so it converts exactly:

| theirs | here |
|---|---|
| `base.*`, Wan's original names | `backbone.*`, diffusers' names (diffusers' own Wan key map) |
| `flow_in(flow_patch_embedding(x)) + modality_embeddings[m]` | `patch_embedders[m]`: the Linear folded into the Conv3d, the identity vector into its bias |
| one `flow_head` for every modality | a copy in each `heads[m]` |
| one timestep for both streams | `shared_timestep=True` (each stream gets its sample's largest timestep: the noisy one's) |
| no AdaLN modality table | `adaln_table=False` |
| modality stream right of RGB in width, RoPE over 2W | `stream_positions="side_by_side"` |
| split cross-attention, zero-padded umT5 without a mask | per-stream contexts, `text_convention="zero_padded"` |
| their modality prompts, modality `raft` | `CheckpointSpec.modality_prompts`, modality `flow` |

Their sampler is Euler on t = linspace(1, 0, N + 1) without shift or CFG; `unityvideo generate
--guidance 1 --shift 1` is the closest (diffusers' Euler schedule ends at t = 1/1000, not 0).
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from .checkpoint import CheckpointSpec, place_asset
from .transformer import UnityVideoTransformer, _empty_model
from .weights import copy_weights

# The authors' modality names -> ours, and the prompt each of their modality streams was trained with.
AUTHORS_MODALITIES = {"depth": "depth", "raft": "flow", "segmentation": "segmentation", "skeleton": "skeleton",
                      "densepose": "densepose"}
AUTHORS_PROMPTS = {
    "depth": "depth map visualization, scene depth from camera, near in warm colors and far in cool colors.",
    "densepose": "densepose visualization with body part UV coordinates.",
    "flow": "optical flow visualization showing motion direction with color and magnitude with intensity.",
    "segmentation": "segmentation mask of foreground objects against background.",
    "skeleton": "human skeleton pose visualization with body keypoints and limbs.",
}
# Their training and inference geometry (Wan2.2-TI2V-5B at 256x256, 33 frames, 8 fps in their script).
AUTHORS_GEOMETRY = dict(frames=33, size=(256, 256), fps=8.0)
WAN_HEAD_DIM = 128  # every published Wan transformer; the weights do not store the head count


# ----- Wan's original names -> diffusers' ---------------------------------------------------------


def is_original_wan(state: dict) -> bool:
    return any(k.startswith(("blocks.0.self_attn.", "model.diffusion_model.")) for k in state)


def wan_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Wan transformer state dict in Wan's original (and DiffSynth's) names, in diffusers' names."""
    from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers

    return convert_wan_transformer_to_diffusers(dict(state))


def wan_config(state: dict[str, torch.Tensor], num_attention_heads: int | None = None) -> dict:
    """WanTransformer3DModel config read off a diffusers-named state dict (the head count: given, else
    dim / 128 as in every published Wan)."""
    weight = state["patch_embedding.weight"]  # (dim, in_channels, pt, ph, pw)
    dim, in_channels, patch = weight.shape[0], weight.shape[1], tuple(weight.shape[2:])
    heads = num_attention_heads or dim // WAN_HEAD_DIM
    if dim % heads:
        raise ValueError(f"model width {dim} is not divisible by {heads} attention heads; pass num_attention_heads")
    layers = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    return dict(patch_size=patch, num_attention_heads=heads, attention_head_dim=dim // heads,
                in_channels=in_channels, out_channels=state["proj_out.weight"].shape[0] // math.prod(patch),
                text_dim=state["condition_embedder.text_embedder.linear_1.weight"].shape[1],
                freq_dim=state["condition_embedder.time_embedder.linear_1.weight"].shape[1],
                ffn_dim=state["blocks.0.ffn.net.0.proj.weight"].shape[0], num_layers=layers,
                cross_attn_norm="blocks.0.norm2.weight" in state, qk_norm="rms_norm_across_heads")


def is_original_wan_path(path: Path) -> bool:
    """A single .safetensors file, or a folder whose config.json is Wan's original one (`WanModel`)."""
    if path.is_file():
        return path.suffix == ".safetensors"
    config = path / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("_class_name") == "WanModel"


def load_original_wan(path: str | Path, num_attention_heads: int | None = None) -> tuple[dict, dict]:
    """(WanTransformer3DModel config, diffusers-named state dict) of a Wan transformer in Wan's original
    format: one .safetensors file, or a folder of them (sharded or not) with Wan's config.json."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no .safetensors files (Wan's original transformer weights)")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    if not is_original_wan(state):
        raise ValueError(f"{path}: these are not Wan's original transformer names (blocks.N.self_attn.*); "
                         "a diffusers folder loads with from_backbone(folder)")
    config_file = path / "config.json" if path.is_dir() else path.with_name("config.json")
    if num_attention_heads is None and config_file.is_file():
        num_attention_heads = json.loads(config_file.read_text()).get("num_heads")
    state = wan_to_diffusers(state)
    return wan_config(state, num_attention_heads), state


# ----- the authors' checkpoint ----------------------------------------------------------------------


def authors_transformer(state: dict[str, torch.Tensor], num_attention_heads: int | None = None,
                        ) -> UnityVideoTransformer:
    """Our transformer computing exactly what the authors' `UnifiedWanModel` with `state` computes."""
    _check_authors_keys(state)
    wan = wan_to_diffusers({k.removeprefix("base."): v for k, v in state.items() if k.startswith("base.")})
    config = wan_config(wan, num_attention_heads)
    model = _empty_model(UnityVideoTransformer, dict(
        modalities=tuple(AUTHORS_MODALITIES.values()), adaln_table=False, experts="per_modality",
        shared_timestep=True, stream_positions="side_by_side", **config), None)
    with torch.no_grad():
        copy_weights(model.backbone, wan, "base.*")
        conv_w, conv_b = state["flow_patch_embedding.weight"].double(), state["flow_patch_embedding.bias"].double()
        lin_w, lin_b = state["flow_in.weight"].double(), state["flow_in.bias"].double()
        weight = torch.einsum("od,dcxyz->ocxyz", lin_w, conv_w)  # flow_in after the patch Conv3d, as one Conv3d
        bias = lin_w @ conv_b + lin_b
        for theirs, ours in AUTHORS_MODALITIES.items():
            embedder = model.patch_embedders[ours]
            embedder.weight.copy_(weight)
            embedder.bias.copy_(bias + state[f"modality_embeddings.{theirs}"].double())
            head = model.heads[ours]
            head.scale_shift_table.copy_(state["flow_head.modulation"])
            head.proj_out.weight.copy_(state["flow_head.head.weight"])
            head.proj_out.bias.copy_(state["flow_head.head.bias"])
    return model


def _check_authors_keys(state: dict) -> None:
    wanted = ["flow_patch_embedding.weight", "flow_patch_embedding.bias", "flow_in.weight", "flow_in.bias",
              "flow_head.head.weight", "flow_head.head.bias", "flow_head.modulation",
              *(f"modality_embeddings.{m}" for m in AUTHORS_MODALITIES)]
    missing = [k for k in wanted if k not in state]
    if missing or not any(k.startswith("base.blocks.") for k in state):
        raise ValueError(f"not the authors' UnityVideo checkpoint: missing {missing[:4] or ['base.blocks.*']} "
                         "(expected their UnifiedWanModel state dict: base.*, flow_patch_embedding, flow_in, "
                         "modality_embeddings.<modality>, flow_head)")
    extra = sorted(k for k in state if not k.startswith("base.") and k not in wanted)
    if extra:
        raise ValueError(f"the checkpoint has tensors this converter does not know: {extra[:4]}; it was written "
                         "by another version of the authors' code")


def convert_authors_checkpoint(checkpoint: str | Path, base: str | Path, out: str | Path,
                               num_attention_heads: int | None = None) -> Path:
    """The authors' safetensors file + a diffusers Wan2.2 folder (its text_encoder/, tokenizer/, vae/;
    the transformer weights come from the checkpoint) -> a UnityVideo checkpoint folder at `out`, which
    names the text encoder and VAE relative to itself."""
    checkpoint, base, out = Path(checkpoint), Path(base), Path(out)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such file (the authors' .safetensors checkpoint)")
    for part in ("text_encoder", "tokenizer", "vae"):
        if not (base / part).is_dir():
            raise FileNotFoundError(f"{base / part}: missing; --base is a diffusers Wan2.2-TI2V-5B folder "
                                    "(text_encoder/, tokenizer/, vae/), e.g. Wan2.2-TI2V-5B-Diffusers")
    heads = num_attention_heads or _heads_from_folder(base)
    model = authors_transformer(load_file(str(checkpoint)), heads)
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp / "transformer", safe_serialization=True)
    CheckpointSpec(text_encoder=place_asset(str(base), tmp, out, "text_encoder", "reference"), codec="wan2.2",
                   codec_folder=place_asset(str(base / "vae"), tmp, out, "vae", "reference"),
                   modalities=list(AUTHORS_MODALITIES.values()), tasks=["control", "estimate", "joint"],
                   frames=AUTHORS_GEOMETRY["frames"], size=AUTHORS_GEOMETRY["size"], fps=AUTHORS_GEOMETRY["fps"],
                   shift=1.0, estimate_mode="generative", estimate_caption=True, text_convention="zero_padded",
                   modality_prompts=dict(AUTHORS_PROMPTS)).save(tmp)
    shutil.rmtree(out, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(out)
    return out


def _heads_from_folder(base: Path) -> int | None:
    config = base / "transformer" / "config.json"
    return json.loads(config.read_text()).get("num_attention_heads") if config.is_file() else None
