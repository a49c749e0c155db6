"""`unityvideo eval`: benchmark a checkpoint on clips with ground truth and write the results and a report."""

from __future__ import annotations

import argparse
from pathlib import Path

from unityvideo.cli_args import device, integer, number, output_file


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help="benchmark a checkpoint: estimation, control, joint generation and t2v against ground truth",
        description="Runs every task on clips with raw ground truth (the world's test split) and writes OUT "
        "(metric rows as JSON), OUT-stem.md (a table), OUT-stem.per_clip.json, OUT-stem.<task>.png "
        "(model vs baseline) and report.html (videos side by side, metrics) beside OUT.",
    )
    p.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (unityvideo.json + transformer/)")
    p.add_argument("--data", type=Path, required=True,
                   help="dataset folder (with manifest.csv) or a manifest; rows need the raw column")
    p.add_argument("--out", type=output_file, required=True, help="results .json path (the other files go beside it)")
    p.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                   help="estimate control joint t2v (default: those of the four the checkpoint learned)")
    p.add_argument("--modalities", nargs="+", default=None, metavar="M",
                   help="modalities to evaluate (default: those the checkpoint learned)")
    p.add_argument("--clips", type=integer(0), default=16, help="number of clips (default 16; 0 = all)")
    p.add_argument("--split", default=None, help="manifest split (default: test when present, else all rows)")
    p.add_argument("--prior-data", type=Path, default=None,
                   help="dataset whose training split fits the estimation baselines (default: --data's; "
                        "without training rows each clip's prior is fitted on the other evaluated clips)")
    p.add_argument("--steps", type=integer(1), default=30, help="denoising steps (default 30)")
    p.add_argument("--estimate-steps", nargs="+", default=None, metavar="N | M=N",
                   help="denoising steps of estimation: one count, or per modality (depth=16 flow=1; the "
                        "others take --steps). Default: --steps; 1 = the x0 prediction from noise")
    p.add_argument("--ensemble", nargs="+", default=None, metavar="K | M=K",
                   help="estimates per clip combined (`Modality.combine`), for estimation and the "
                        "re-estimates that score control and joint: one size, or per modality (flow=16 "
                        "densepose=16; the others take 1). Default 1")
    p.add_argument("--guidance", type=number(0), default=None,
                   help="text guidance of control/joint/t2v (default: the pipeline's, 5); estimation uses none")
    p.add_argument("--seed", type=int, default=0, help="base seed; clip i gets a seed of (seed, i) (default 0)")
    p.add_argument("--batch-size", type=integer(1), default=4, help="clips per forward (default 4)")
    p.add_argument("--keep-videos", type=integer(0), default=2, help="clips per task and modality shown in the report")
    p.add_argument("--device", type=device(), default=None, help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16 (default float32)")
    p.add_argument("--loss-curve", type=Path, default=None,
                   help="a loss-curve PNG, or a training run's metrics.jsonl to plot, for the report")
    p.add_argument("--note", action="append", default=[], metavar="KEY=VALUE",
                   help="a line in the report's header, e.g. --note 'training=from scratch, 4k steps'")
    p.add_argument("--no-report", action="store_true", help="skip report.html")
    p.set_defaults(func=run)


def parse_counts(values: list[str] | None, flag: str = "--estimate-steps") -> int | dict[str, int] | None:
    """A per-modality count flag (--estimate-steps, --ensemble): None, one count ("16"), or
    MODALITY=N items ("depth=16 flow=1")."""
    if not values:
        return None
    if len(values) == 1 and values[0].strip().isdigit():
        return int(values[0])
    counts = {}
    for item in values:
        name, sep, count = item.partition("=")
        if not sep or not name.strip() or not count.strip().isdigit():
            raise ValueError(f"{flag} {item!r}: give one count (16) or MODALITY=N items (depth=16 flow=1)")
        counts[name.strip()] = int(count)
    return counts


def _ensemble_note(settings: dict) -> str:
    from unityvideo.eval.runner import describe_counts

    sizes = describe_counts(settings.get("ensemble", 1))
    if not sizes.isdigit():
        return f", ensembles of {sizes}"
    return f", an ensemble of {sizes} per estimate" if sizes != "1" else ""


def _estimate_steps_note(settings: dict) -> str:
    from unityvideo.eval.runner import describe_counts

    return describe_counts(settings.get("estimate_steps") or settings["steps"])


def _notes(args: argparse.Namespace, settings: dict) -> dict[str, str]:
    notes = {"checkpoint": f"{args.checkpoint} (step {settings.get('step')})",
             "data": f"{settings['data']}: {len(settings['clips'])} clips, {settings['frames']} frames of "
                     f"{settings['size'][0]}×{settings['size'][1]}",
             "sampling": f"{settings['steps']} steps ({_estimate_steps_note(settings)} for "
                         f"estimation{_ensemble_note(settings)}), guidance {settings['guidance'] or 'default'}, "
                         f"seed {settings['seed']}",
             "evaluation time": f"{settings['wall_s']:.0f} s"}
    if settings.get("skipped"):
        notes["skipped clips"] = str(len(settings["skipped"]))
    for note in args.note:
        key, sep, value = note.partition("=")
        if not sep:
            raise ValueError(f"--note {note!r}: write KEY=VALUE")
        notes[key.strip()] = value.strip()
    return notes


def run(args: argparse.Namespace) -> int:
    if args.out.suffix.lower() != ".json":
        raise ValueError(f"--out {args.out}: give a .json path (the table, plots and report go beside it)")
    if args.dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"--dtype {args.dtype!r}: choose float32, bfloat16 or float16")
    for note in args.note:
        if "=" not in note:
            raise ValueError(f"--note {note!r}: write KEY=VALUE")
    if args.loss_curve is not None and not args.loss_curve.is_file():
        raise FileNotFoundError(f"--loss-curve {args.loss_curve}: no such file")
    estimate_steps = parse_counts(args.estimate_steps, "--estimate-steps")
    ensemble = parse_counts(args.ensemble, "--ensemble")

    import json

    from unityvideo.eval.runner import EVAL_TASKS, evaluate
    from unityvideo.models.checkpoint import load_checkpoint_spec

    spec = load_checkpoint_spec(args.checkpoint)  # a missing checkpoint fails here, before any work
    tasks = args.tasks or [t for t in EVAL_TASKS if not spec.tasks or t in spec.tasks]
    out_dir, name = args.out.parent, args.out.stem
    rows = evaluate(args.checkpoint, args.data, out_dir, tasks=tasks, modalities=args.modalities,
                    clips=args.clips or None, steps=args.steps, estimate_steps=estimate_steps,
                    ensemble=1 if ensemble is None else ensemble,
                    guidance=args.guidance, seed=args.seed,
                    split=args.split, batch_size=args.batch_size, keep_videos=args.keep_videos,
                    device=args.device, dtype=args.dtype, name=name, prior_data=args.prior_data)
    print(f"wrote {len(rows)} metric rows to {args.out} (table: {out_dir / (name + '.md')})")
    if not args.no_report:
        from unityvideo.eval.report import report_from_results

        settings = json.loads((out_dir / f"{name}.per_clip.json").read_text())["settings"]
        report = report_from_results(out_dir, name, loss_curve=args.loss_curve, notes=_notes(args, settings))
        print(f"report: {report}")
    return 0
