"""`unityvideo train`: train (or resume) a UnityVideo model from a YAML config, also under torchrun."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a UnityVideo model (one process, or torchrun with DDP / FSDP2)",
        description="Train a UnityVideo model from a YAML config. Any field can be overridden with "
        "section.key=value (e.g. train.batch_size=16 optim.lr=3e-4 stages.0.steps=500). Under "
        "`torchrun --nproc_per_node N -m unityvideo.cli train ...` every process joins one run.",
    )
    p.add_argument("--config", type=Path, required=True, help="YAML config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="dotted config overrides")
    p.add_argument("--resume", nargs="?", const=True, default=None, metavar="PATH",
                   help="continue from the latest checkpoint of the run folder (or of PATH: a run or "
                        "checkpoint folder)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    import os

    from unityvideo.training.config import dump_config, load_config

    config = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(config), end="")
        return 0
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(name)s: %(message)s", datefmt="%H:%M:%S")
    # the per-modality datasets each log an "epoch done" line; the trainer reports what matters
    logging.getLogger("unityvideo.data.dataset").setLevel(logging.WARNING)
    from unityvideo.training.trainer import train

    run_dir = train(config, resume=args.resume)
    if rank == 0:
        print(f"run folder: {run_dir}")
    return 0
