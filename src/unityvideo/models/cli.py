"""`unityvideo convert`: the authors' released UnityVideo checkpoint as a checkpoint folder of ours."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..cli_args import integer, output_folder


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="convert the authors' released UnityVideo checkpoint into a checkpoint folder",
        description="Convert the authors' UnityVideo checkpoint (their UnifiedWanModel on Wan2.2-TI2V-5B, "
        "a .safetensors file) into a UnityVideo checkpoint folder that `unityvideo generate`, `eval` and "
        "UnityVideoPipeline load: exact (the same outputs to float tolerance), with their modality prompts, "
        "one shared timestep for both streams as they trained it, and CFG, ensembles and every other "
        "pipeline option on top. Sample as they did with --guidance 1 --shift 1.",
        epilog="example: unityvideo convert unityvideo_wan22_ti2v_5b_step15000_ema.safetensors "
        "--base Wan2.2-TI2V-5B-Diffusers --out checkpoints/unityvideo-5b",
    )
    p.add_argument("checkpoint", type=Path, help="the authors' .safetensors checkpoint")
    p.add_argument("--base", type=Path, required=True,
                   help="a diffusers Wan2.2-TI2V-5B folder: its text_encoder/, tokenizer/ and vae/ are used "
                        "(referenced relative to --out, not copied); the transformer comes from the checkpoint")
    p.add_argument("--out", type=output_folder, required=True, help="the checkpoint folder to write")
    p.add_argument("--num-heads", type=integer(1), default=None,
                   help="attention heads (default: the base's transformer/config.json, else width / 128)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .convert import convert_authors_checkpoint

    out = convert_authors_checkpoint(args.checkpoint, args.base, args.out, args.num_heads)
    print(f"checkpoint folder: {out}")
    return 0
