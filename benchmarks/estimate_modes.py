"""Generative (the paper's L_est) vs one-step deterministic estimation, at an equal training budget.

    python benchmarks/estimate_modes.py --out runs/estimate-modes --steps 300 --seeds 0 1
    python benchmarks/estimate_modes.py --out runs/estimate-modes --report-only

Each (mode, seed) fine-tunes the shipped checkpoint with the same recipe (its routing, all five
modalities, `--steps` steps, `--lr-scale` of its learning rates), the only difference being
`routing.estimate_mode` (and, for `one_step_l1`, `routing.estimate_loss`). Both are then scored on the same held-out clips of a world seed never used
for training or tuning (`--world-seed`), with the pooled metrics and the prior baselines of
`unityvideo.eval`: the generative mode samples with the demo's per-modality step counts (one sample
each), the one-step mode runs one forward. Runs resume (a finished run is skipped). Writes
OUT/results.json and OUT/estimate_modes.md (every finished run in OUT: mean ± half the range over
seeds, each seed's verdict, the bar beside it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

PALETTE = ("segmentation", "skeleton", "densepose")  # modalities drawn in a palette of discrete colours
# name -> (routing.estimate_mode, routing.estimate_loss)
MODES = {"generative": ("generative", {}), "one_step": ("one_step", {}),
         "one_step_l1": ("one_step", dict.fromkeys(PALETTE, "l1"))}


def mode_config(out: Path, mode: str, seed: int, steps: int, lr_scale: float, clips: int, batch: int):
    from unityvideo.demo import FINE_TUNE_LR_SCALE, demo_config

    config = demo_config(out, from_scratch=False, steps=steps, preset=None, train_clips=clips, test_clips=8,
                         seed=seed)
    config.routing.estimate_mode, config.routing.estimate_loss = MODES[mode]
    config.optim.lr *= lr_scale / FINE_TUNE_LR_SCALE  # from the demo's fine-tune rates to lr_scale of the recipe's
    config.optim.unity_lr *= lr_scale / FINE_TUNE_LR_SCALE
    config.train.batch_size = batch
    config.train.eval_every = steps
    config.validate()
    return config


def run(mode: str, seed: int, args) -> dict:
    from unityvideo.demo import DEFAULT_ESTIMATE_STEPS
    from unityvideo.eval.runner import evaluate
    from unityvideo.training import train

    out = args.out / mode / f"seed{seed}"
    result_file = out / "estimate_modes.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    config = mode_config(out, mode, seed, args.steps, args.lr_scale, args.train_clips, args.batch_size)
    start = time.perf_counter()
    run_dir = Path(train(config, resume=True if (out / "run" / "checkpoints").is_dir() else None))
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    rows = evaluate(run_dir / "export", args.data, out / "eval", tasks=["estimate"], clips=args.clips,
                    estimate_steps=dict(DEFAULT_ESTIMATE_STEPS), steps=max(DEFAULT_ESTIMATE_STEPS.values()),
                    seed=seed, split="test", keep_videos=1)
    result = {"mode": mode, "seed": seed, "steps": args.steps, "train_s": round(train_s, 1),
              "eval_s": round(time.perf_counter() - start, 1),
              "rows": [r for r in rows if r["primary"] or r["metric"] in ("fg_iou", "body_iou", "epe_moving", "pck@0.2")]}
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def table(results: list[dict]) -> str:
    keys = list(dict.fromkeys((r["modality"], r["metric"]) for res in results for r in res["rows"]))
    modes = [m for m in MODES if any(r["mode"] == m for r in results)]
    lines = ["| modality | metric | bar (non-oracle) | " + " | ".join(modes) + " |", "|---|---|---|" + "---|" * len(modes)]
    for modality, metric in keys:
        cells, bar = [], None
        for mode in modes:
            found = [r for res in results if res["mode"] == mode for r in res["rows"]
                     if (r["modality"], r["metric"]) == (modality, metric)]
            values = [r["model"] for r in found if r["model"] is not None]
            bar = bar or next((f"{r['baseline']:.3f} ({r['baseline_name']})" for r in found
                               if r["baseline"] is not None), "–")
            verdicts = "/".join(r["verdict"] or "–" for r in found)
            cells.append("n/a" if not values else
                         f"{statistics.mean(values):.3f} ± {(max(values) - min(values)) / 2:.3f} ({verdicts})")
        arrow = "↑" if found and found[0]["higher_is_better"] else "↓"
        lines.append(f"| {modality} | {metric} {arrow} | {bar} | " + " | ".join(cells) + " |")
    times = {m: [r["train_s"] for r in results if r["mode"] == m] for m in modes}
    evals = {m: [r["eval_s"] for r in results if r["mode"] == m] for m in modes}
    lines.append("| | train / eval time (s) | | " + " | ".join(
        f"{statistics.mean(times[m]):.0f} / {statistics.mean(evals[m]):.0f}" for m in modes) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("runs/estimate-modes"))
    p.add_argument("--data", type=Path, required=True, help="a world with a train and a test split, unseen seed")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--modes", nargs="+", choices=sorted(MODES), default=["generative", "one_step"],
                   help="one_step_l1: one-step with an L1 loss on the palette modalities (segmentation, "
                        "skeleton, DensePose)")
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps of every run")
    p.add_argument("--lr-scale", type=float, default=0.5, help="fraction of the recipe's learning rates")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--train-clips", type=int, default=256, help="world clips to fine-tune on")
    p.add_argument("--clips", type=int, default=16, help="held-out clips scored")
    p.add_argument("--report-only", action="store_true", help="only tabulate the finished runs in OUT")
    args = p.parse_args(argv)
    if not args.report_only:
        for seed in args.seeds:
            for mode in args.modes:
                print(f"== {mode} seed {seed}", flush=True)
                run(mode, seed, args)
    # every finished run in OUT, whichever invocation trained it
    results = [json.loads(f.read_text()) for mode in MODES
               for f in sorted((args.out / mode).glob("seed*/estimate_modes.json"))]
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    (args.out / "estimate_modes.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
