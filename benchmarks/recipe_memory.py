"""Training memory per Wan size: measured activation bytes per token per layer, and what fits a GPU.

Activations are measured, not guessed: one forward of a 1-layer and a 2-layer model with the preset's
real widths (random weights, fp32 parameters under bf16 autocast, as the trainer runs on GPU) on a
two-stream clip, counting the bytes autograd saves for backward (`saved_tensors_hooks`, each storage
once). The 2-layer minus 1-layer difference is one block; two clip sizes split it into a per-token
part and a fixed part (the prompt tokens' cross-attention keys and values). Neither depends on
the device. With activation checkpointing a block keeps only its input (tokens x dim x 4 bytes) and
one block's activations are live during its recomputation.

The rest is arithmetic, stated so it can be checked: full fine-tuning keeps fp32 weights, gradients,
AdamW's two moments and the EMA (20 bytes per parameter); LoRA keeps the frozen backbone in fp32
(4 bytes per parameter) and 20 bytes per trained parameter. FSDP2 divides the per-parameter state by
the number of GPUs. A configuration fits when state + micro-batch x activations stays under 90 % of
the GPU's memory (the rest: CUDA context, allocator fragmentation, the text encoder and VAE). The
per-step weight copies are counted under FSDP2 too, where its bf16 parameters replace them: an
upper bound there.

    python benchmarks/recipe_memory.py            # writes benchmarks/results/recipe_memory.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from unityvideo.models import CODEC_GEOMETRY, PRESET_CODECS, PRESETS, Stream, UnityVideoTransformer
from unityvideo.models.lora import LoraSettings, add_lora

SIZES = ("wan2.1-t2v-1.3b", "wan2.2-ti2v-5b", "wan2.1-t2v-14b")
CLIP = (33, 256, 256)           # the authors' training clip: frames, height, width
# two smaller clips per codec for the measurement (96 and 384 tokens)
PROBES = {"wan2.1": ((9, 64, 64), (9, 128, 128)), "wan2.2": ((9, 128, 128), (9, 256, 256))}
STREAMS, CONTEXT = 2, 512       # rgb + one modality; umT5 padded to 512 tokens
GPUS = {"80 GB": 80e9, "141 GB": 141e9}
RESERVE = 0.9
LORA_RANK = 32


def saved_bytes(model: UnityVideoTransformer, streams: list[Stream]) -> int:
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(streams)
    del out
    return sum(seen.values())


def block_bytes(model: UnityVideoTransformer, name: str, clip: tuple[int, int, int]) -> tuple[float, int]:
    """Saved bytes of one block (2 blocks minus 1 block) on a two-stream clip, and its token count."""
    latent = CODEC_GEOMETRY[PRESET_CODECS[name]].latent_shape(*clip)
    context = torch.randn(1, CONTEXT, model.config.text_dim)
    streams = [Stream(m, torch.randn(1, *latent), torch.tensor([0.5]), context) for m in ("rgb", "depth")]
    blocks = model.backbone.blocks
    totals = []
    for count in (1, 2):
        model.backbone.blocks = blocks[:count]
        totals.append(saved_bytes(model, streams))
    model.backbone.blocks = blocks
    patch = model.config.patch_size
    tokens = STREAMS * latent[1] * (latent[2] // patch[1]) * (latent[3] // patch[2])
    return totals[1] - totals[0], tokens


def per_layer(name: str) -> tuple[float, float, list[int]]:
    """A block's saved bytes as fixed + per_token * tokens, from two probe clips. The fixed part is
    mostly autocast's bf16 copies of the block's fp32 weights (2 bytes per parameter), kept for the
    backward; it does not grow with the batch."""
    torch.manual_seed(0)
    model = UnityVideoTransformer.from_preset(name, num_layers=2, modalities=("depth",))
    (small, n_small), (large, n_large) = (block_bytes(model, name, clip) for clip in PROBES[PRESET_CODECS[name]])
    per_token = (large - small) / (n_large - n_small)
    return small - per_token * n_small, per_token, [n_small, n_large]


def lora_trained(name: str) -> tuple[int, int]:
    with torch.device("meta"):
        model = UnityVideoTransformer.from_preset(name)
        total = sum(p.numel() for p in model.parameters())
        add_lora(model, LoraSettings(rank=LORA_RANK, alpha=LORA_RANK))
    return total, sum(p.numel() for p in model.parameters() if p.requires_grad)


def fits(state: float, per_sample: float, memory: float) -> int:
    return max(0, int((RESERVE * memory - state) // per_sample))


def row(name: str) -> dict:
    fixed, per_token, probe_tokens = per_layer(name)
    total, trained = lora_trained(name)
    cfg = PRESETS[name]
    dim = cfg["num_attention_heads"] * cfg.get("attention_head_dim", 128)
    layers = cfg["num_layers"]
    latent = CODEC_GEOMETRY[PRESET_CODECS[name]].latent_shape(*CLIP)
    tokens = STREAMS * latent[1] * (latent[2] // 2) * (latent[3] // 2)
    # per sample (grows with the micro-batch) and per step (autocast's weight copies: all blocks', or
    # one block's at a time under activation checkpointing)
    act = {"none": layers * tokens * per_token, "full": tokens * layers * dim * 4 + tokens * per_token}
    fixed_step = {"none": layers * fixed, "full": fixed}
    state = {"full": 20 * total, "lora": 4 * total + 20 * trained}
    out = dict(preset=name, parameters=total, lora_rank=LORA_RANK, lora_trained=trained,
               activation_bytes_per_token_layer=per_token, activation_bytes_fixed_per_layer=fixed,
               probe_tokens=probe_tokens, clip=list(CLIP),
               tokens_per_sample=tokens, activations_per_sample=act, activations_per_step=fixed_step,
               state_bytes=state, fits={})
    for gpu, memory in GPUS.items():
        for mode, state_bytes in state.items():
            for gpus in (1, 8):
                shard = state_bytes / gpus  # FSDP2 shards every parameter and its state
                for ckpt, per_sample in act.items():
                    out["fits"][f"{gpu}/{mode}/{gpus}gpu/ckpt-{ckpt}"] = fits(shard + fixed_step[ckpt], per_sample,
                                                                             memory)
    return out


def table(rows: list[dict]) -> str:
    gib = 2 ** 30
    lines = ["| size | activations / token / layer | per 33×256² sample (no ckpt / ckpt) | weight copies per step "
             "(no ckpt / ckpt) | full FT state | LoRA-32 state |", "|---|---|---|---|---|---|"]
    for r in rows:
        a, f = r["activations_per_sample"], r["activations_per_step"]
        lines.append(f"| {r['preset']} | {r['activation_bytes_per_token_layer'] / 1024:.0f} KiB | "
                     f"{a['none'] / gib:.1f} / {a['full'] / gib:.2f} GiB | {f['none'] / gib:.1f} / {f['full'] / gib:.2f} GiB | "
                     f"{r['state_bytes']['full'] / gib:.0f} GiB | {r['state_bytes']['lora'] / gib:.1f} GiB |")
    lines += ["", "Largest micro-batch per GPU (0 = does not fit), activation checkpointing off / on:", "",
              "| size | GPU | full, 1 GPU | full, FSDP 8 | LoRA, 1 GPU | LoRA, FSDP 8 |", "|---|---|---|---|---|---|"]
    for r in rows:
        for gpu in GPUS:
            cells = [f"{r['fits'][f'{gpu}/{m}/{g}gpu/ckpt-none']} / {r['fits'][f'{gpu}/{m}/{g}gpu/ckpt-full']}"
                     for m in ("full", "lora") for g in (1, 8)]
            lines.append(f"| {r['preset']} | {gpu} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=SIZES)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "recipe_memory.json")
    args = parser.parse_args(argv)
    rows = [row(name) for name in args.sizes]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
