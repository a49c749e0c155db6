"""`unityvideo demo`: the whole method on the built-in world, end to end, in minutes on a CPU.

1. render a world (train split and a held-out test split) into OUT/world;
2. train the tiny preset with the full recipe (curriculum, task routing, EMA) into OUT/run — by
   default briefly from the shipped checkpoint, or from scratch with `--from-scratch`;
3. run every task on held-out clips, score them against the ground truth and trivial baselines;
4. write OUT/report.html (videos side by side, loss curve, metrics) and OUT/metrics.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from unityvideo.assets import DEFAULT_CHECKPOINT
from unityvideo.cli_args import integer, output_folder

# Denoising steps and ensemble size (estimates combined per clip, Modality.combine) of each modality's
# estimate, chosen on held-out clips of another world seed (docs/demo.md): depth keeps improving up to 16
# steps; flow and segmentation are best from 1 step (the x0 prediction, close to the posterior mean);
# skeleton and DensePose gain nothing from 16 steps over 4. Flow's single estimates are noisy, and 16 of
# them combined beat 4; for the other modalities 16 buy nothing over 4.
DEFAULT_ESTIMATE_STEPS = {"depth": 16, "flow": 1, "segmentation": 1, "skeleton": 4, "densepose": 4}
DEFAULT_ENSEMBLE = {"depth": 4, "flow": 16, "segmentation": 4, "skeleton": 4, "densepose": 4}
FINE_TUNE_LR_SCALE = 0.2  # the fine-tune's learning rates, as a fraction of the shipped recipe's
ALL_MODALITIES = {"depth": 1.0, "flow": 1.0, "densepose": 1.0, "segmentation": 1.0, "skeleton": 1.0}


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo",
        help="world -> training -> every task on held-out clips -> report.html (minutes on a CPU)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=output_folder, default=Path("out/demo"), help="output folder (default out/demo)")
    p.add_argument("--from-scratch", action="store_true",
                   help="train a fresh model with the shipped recipe's curriculum instead of fine-tuning the "
                        "shipped checkpoint")
    p.add_argument("--steps", type=integer(1), default=None,
                   help="training steps (default: 60 fine-tuning, 600 from scratch)")
    p.add_argument("--preset", default=None, help="model preset for --from-scratch (default: the shipped one, tiny)")
    p.add_argument("--train-clips", type=integer(1), default=64, help="world clips to train on (default 64)")
    p.add_argument("--test-clips", type=integer(1), default=8, help="held-out clips to evaluate (default 8)")
    p.add_argument("--eval-steps", type=integer(1), default=16, help="denoising steps per generation (default 16)")
    p.add_argument("--estimate-steps", nargs="+", default=None, metavar="N | M=N",
                   help="denoising steps of estimation: one count, or per modality (depth=16 flow=1; the "
                        "others take --eval-steps); 1 = the x0 prediction from noise. Default: " +
                        " ".join(f"{m}={n}" for m, n in DEFAULT_ESTIMATE_STEPS.items()) + ", each at most --eval-steps")
    p.add_argument("--ensemble", nargs="+", default=None, metavar="K | M=K",
                   help="estimates per clip combined (median / vote / medoid) in the scoring: one size, or per "
                        "modality (the others take 1); 1 = a single sample. Default: " +
                        " ".join(f"{m}={k}" for m, k in DEFAULT_ENSEMBLE.items()))
    p.add_argument("--seed", type=int, default=0, help="seed of the run and the evaluation")
    p.set_defaults(func=run)


def demo_config(out: Path, from_scratch: bool, steps: int, preset: str | None, train_clips: int,
                test_clips: int, seed: int):
    """The training config of the demo: the shipped checkpoint's own recipe, pointed at OUT."""
    from unityvideo.training.config import load_config

    recipe = DEFAULT_CHECKPOINT / "config.yaml"
    if not recipe.is_file():
        raise FileNotFoundError(f"{recipe} is missing: the shipped checkpoint is not installed (reinstall "
                                "unityvideo, or train one with `unityvideo train --config configs/tiny-world.yaml`)")
    overrides = [f"train.run_dir={out / 'run'}", f"train.seed={seed}", f"data.world.cache={out / 'world'}",
                 f"data.world.clips={train_clips}", f"data.world.val_clips={test_clips}"]
    config = load_config(recipe, overrides)
    if from_scratch:
        from unityvideo.models.transformer import PRESETS

        if preset and preset not in PRESETS:
            raise ValueError(f"--preset {preset}: choose one of {', '.join(sorted(PRESETS))}")
        config.model.init = None
        if preset:
            config.model.preset = preset
        total = config.total_steps
        for stage in config.stages:  # keep the curriculum's proportions
            stage.steps = max(1, round(stage.steps * steps / total))
        config.optim.warmup_steps = min(config.optim.warmup_steps, max(1, steps // 10))
    else:
        if preset:
            raise ValueError("--preset needs --from-scratch (the shipped checkpoint is the tiny preset)")
        last = config.stages[-1]
        config.model.init = str(DEFAULT_CHECKPOINT)
        config.stages = [type(last)(name="fine-tune", steps=steps, modalities=dict(ALL_MODALITIES), tasks=last.tasks)]
        config.optim.warmup_steps = max(1, steps // 10)
        config.optim.lr *= FINE_TUNE_LR_SCALE
        config.optim.unity_lr = (config.optim.unity_lr or config.optim.lr) * FINE_TUNE_LR_SCALE
    train = config.train
    # A fine-tune's validation curve needs only its ends; each pass scores every task on the held-out clips.
    train.eval_every = max(1, steps // 4) if from_scratch else steps
    train.checkpoint_every = max(1, steps // 2)
    train.log_every = max(1, min(train.log_every, steps // 20))
    config.validate()
    return config


def combined_loss_records(run_dir: Path, shipped: bool) -> list[dict]:
    """The demo run's metrics, after the shipped checkpoint's own training log when it was the start."""
    def read(path: Path) -> list[dict]:
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []

    before = read(DEFAULT_CHECKPOINT / "metrics.jsonl") if shipped else []
    offset = max((r.get("step", 0) for r in before), default=0)
    return before + [{**r, "step": r.get("step", 0) + offset} for r in read(run_dir / "metrics.jsonl")]


def run(args: argparse.Namespace) -> int:
    from unityvideo.eval.cli import parse_counts
    from unityvideo.eval.report import plot_loss_curve, report_from_results
    from unityvideo.eval.runner import describe_counts, evaluate, modality_counts
    from unityvideo.training import train
    from unityvideo.training.data import prepare_world, world_folder

    start = time.perf_counter()
    out: Path = args.out
    steps = args.steps or (600 if args.from_scratch else 60)
    if steps < 1 or args.train_clips < 1 or args.test_clips < 2:
        raise ValueError("--steps and --train-clips must be >= 1 and --test-clips >= 2 (control is scored "
                         "against another clip's signal)")
    config = demo_config(out, args.from_scratch, steps, args.preset, args.train_clips, args.test_clips, args.seed)
    requested = (parse_counts(args.estimate_steps, "--estimate-steps") if args.estimate_steps else
                 {m: min(n, args.eval_steps) for m, n in DEFAULT_ESTIMATE_STEPS.items()})
    # Both fail here, before any work.
    estimate_steps = modality_counts(requested, args.eval_steps, list(ALL_MODALITIES))
    ensemble = modality_counts(parse_counts(args.ensemble, "--ensemble") if args.ensemble else DEFAULT_ENSEMBLE,
                               1, list(ALL_MODALITIES), "--ensemble")

    print(f"[1/3] world: {args.train_clips} train + {args.test_clips} held-out clips -> {out / 'world'}")
    world = prepare_world(config.data.world, Path(config.train.run_dir))
    print(f"[2/3] training {'from scratch' if args.from_scratch else 'from the shipped checkpoint'}: {steps} steps")
    train_start = time.perf_counter()
    run_dir = Path(train(config))
    train_s = time.perf_counter() - train_start

    print(f"[3/3] every task on {args.test_clips} held-out clips, {args.eval_steps} sampling steps")
    eval_dir = out / "eval"
    rows = evaluate(run_dir / "export", world_folder(config.data.world, run_dir), eval_dir, split="test",
                    steps=args.eval_steps, estimate_steps=estimate_steps, ensemble=ensemble,
                    seed=args.seed)
    (out / "metrics.json").write_text(json.dumps(rows, indent=1) + "\n")
    loss = plot_loss_curve(combined_loss_records(run_dir, not args.from_scratch), out / "loss.png")
    recipe = (f"from scratch: {steps} steps of the curriculum" if args.from_scratch else
              f"the shipped checkpoint ({DEFAULT_CHECKPOINT.name}, trained with `unityvideo train`) fine-tuned "
              f"for {steps} steps on all five modalities; pass --from-scratch to train a fresh model")
    notes = {"recipe": recipe, "training time": f"{train_s:.0f} s",
             "held-out clips": f"{args.test_clips} test-split clips (scenes never seen in training)",
             "sampling": f"{args.eval_steps} steps ({describe_counts(estimate_steps)} for estimation, "
                         f"ensemble sizes {describe_counts(ensemble)})",
             "total time": f"{time.perf_counter() - start:.0f} s"}
    report = report_from_results(eval_dir, loss_curve=loss, notes=notes, report_dir=out,
                                 title="UnityVideo demo on the built-in world")
    primary = [r for r in rows if r["primary"] and r["verdict"] is not None]
    verdicts = ", ".join(f"{r['task']} {r['modality']} {r['verdict']}" for r in primary)
    print(f"primary metrics against their baselines: {verdicts}")
    print(f"report: {report}; metrics: {out / 'metrics.json'}")
    print(f"done in {time.perf_counter() - start:.0f} s")
    return 0
