"""Can a model trained from scratch move information from a clean condition stream to the target?

The target stream is to become an exact copy of a clean condition stream whose every token is an
independent random value, so the only way to lower the loss below the no-condition floor (about 0.87)
is for each target token to find its pixel-aligned token in the other stream. Each variant is a set of
transformer config flags; the tiny preset, 4 frames of 16x16 latents (256 tokens per stream), batch 8.

    python benchmarks/condition_lookup.py --steps 300
    python benchmarks/condition_lookup.py --variants paper shared+local --steps 200 --threads 1

Writes benchmarks/results/condition_lookup.json and prints the mean loss per 50 steps.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from unityvideo.models.transformer import Stream, UnityVideoTransformer

VARIANTS = {
    "paper": {},  # side-by-side positions, Wan's default init
    "shared": {"stream_positions": "shared"},
    "local": {"attention_init": "local"},
    "shared+local": {"stream_positions": "shared", "attention_init": "local"},
    "wide+theta100": {"num_attention_heads": 2, "attention_head_dim": 64, "rope_theta": 100.0},
}
CHANNELS, FRAMES, SIZE, BATCH = 12, 4, 16, 8


def copy_batch(generator: torch.Generator) -> torch.Tensor:
    """Latents with one random value per 2x2 patch (a token), unit variance."""
    coarse = torch.randn(BATCH, CHANNELS, FRAMES, SIZE // 2, SIZE // 2, generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(FRAMES, SIZE, SIZE), mode="nearest")


def train_variant(name: str, steps: int, window: int = 50) -> list[float]:
    torch.manual_seed(0)
    model = UnityVideoTransformer.from_preset("tiny", in_channels=CHANNELS, num_layers=4, **VARIANTS[name])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    context = torch.zeros(BATCH, 4, model.config.text_dim)
    generator = torch.Generator().manual_seed(1)
    means, losses, start = [], [], time.perf_counter()
    for step in range(1, steps + 1):
        x = copy_batch(generator)
        noise = torch.randn(x.shape, generator=generator)
        t = torch.rand(BATCH, generator=generator)
        tb = t.view(-1, 1, 1, 1, 1)
        out = model([Stream("rgb", (1 - tb) * x + tb * noise, t, context),
                     Stream("depth", x, torch.zeros(BATCH), context)])[0]
        loss = (out - (noise - x)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step % window == 0:
            means.append(sum(losses[-window:]) / window)
            print(f"{name:>14} step {step:4d}  mean loss {means[-1]:.4f}  ({time.perf_counter() - start:.0f} s)",
                  flush=True)
    return means


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "condition_lookup.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {name: train_variant(name, args.steps) for name in args.variants}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "window": 50, "mean_loss": results,
                                    "variants": {n: VARIANTS[n] for n in results}}, indent=1) + "\n")
    print("\nvariant          " + " ".join(f"{50 * (i + 1):>7d}" for i in range(args.steps // 50)))
    for name, means in results.items():
        print(f"{name:<16} " + " ".join(f"{m:7.3f}" for m in means))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
