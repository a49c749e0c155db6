"""What a test-time ensemble buys estimation: each modality's metrics against the trivial baseline for
K = 1, 2, 4, ... estimates per clip combined per pixel (`Modality.combine`) at each number of
denoising steps, and the time it costs (K estimates of S steps cost about K * S forwards).

Runs `unityvideo.eval.evaluate` (task estimate only) on held-out world clips, once per (K, steps), with
the same per-clip seeds, so the first ensemble member is the K = 1 estimate.

    python benchmarks/estimate_ensemble.py --data out/demo/world/<world> --clips 16 --ensembles 1 4
    python benchmarks/estimate_ensemble.py --checkpoint runs/tiny-world/export --data DIR --steps 16 8

Writes benchmarks/results/estimate_ensemble.json and prints one row per modality and metric.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from perf_common import estimate_parser, run_benchmark
from unityvideo.assets import checkpoint_label
from unityvideo.eval.runner import evaluate, is_better

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv=None) -> argparse.Namespace:
    parser = estimate_parser(__doc__, clips=16)
    parser.add_argument("--steps", type=int, nargs="+", default=[16], metavar="S", help="denoising steps per estimate")
    parser.add_argument("--ensembles", type=int, nargs="+", default=[1, 4], metavar="K")
    parser.add_argument("--out", type=Path, default=RESULTS / "estimate_ensemble.json")
    return parser.parse_args(argv)


def measure(args: argparse.Namespace) -> dict:
    runs = []
    with tempfile.TemporaryDirectory() as scratch:
        for steps in args.steps:
            for k in args.ensembles:
                start = time.perf_counter()
                rows = evaluate(args.checkpoint, args.data, Path(scratch) / f"k{k}-s{steps}", tasks=["estimate"],
                                clips=args.clips, steps=steps, ensemble=k, keep_videos=0)
                runs.append({"ensemble": k, "steps": steps, "wall_s": round(time.perf_counter() - start, 1),
                             "rows": rows})
    return {"benchmark": "estimate_ensemble", "checkpoint": checkpoint_label(args.checkpoint), "data": str(args.data),
            "clips": args.clips, "runs": runs}


def render(result: dict) -> str:
    names = [f"K={run['ensemble']} S={run['steps']}" for run in result["runs"]]
    lines = [f"estimation on {result['clips']} held-out clips; model at K estimates of S denoising steps per clip",
             "| modality | metric | trivial | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for i, row in enumerate(result["runs"][0]["rows"]):
        cells = []
        for run in result["runs"]:
            other = run["rows"][i]
            mark = " *" if is_better(other) else ""
            cells.append("–" if other["model"] is None else f"{other['model']:.4f}{mark}")
        base = "–" if row["baseline"] is None else f"{row['baseline']:.4f}"
        lines.append(f"| {row['modality']} | {row['metric']} | {base} | " + " | ".join(cells) + " |")
    lines.append("wall time: " + ", ".join(f"{name} {r['wall_s']:.0f} s" for name, r in zip(names, result["runs"]))
                 + "   (* beats the trivial baseline)")
    return "\n".join(lines)


def main(argv=None) -> None:
    run_benchmark(parse_args(argv), measure, render)


if __name__ == "__main__":
    main()
