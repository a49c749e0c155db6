"""The paper's ablations (its Tables 2, 3 and 4; Tables 5 and 6 go beyond it) at the scale of a CPU,
every arm a set of config overrides on one base recipe, every arm with the same step budget and
several seeds.

    python benchmarks/ablations.py --seeds 0 1 --steps 150 --batch-size 8 --frames 4
    python benchmarks/ablations.py --out runs/ablations --report-only     # tables from finished arms

Each (arm, seed) trains with `unityvideo.training.train` into OUT/<arm>/seed<S> (resumable: a finished
arm is skipped, an interrupted one continues from its last checkpoint), then is scored on the
held-out world clips: the trainer's validation loss per task (fixed clips, timesteps and noise) and,
with `unityvideo.eval.evaluate`, text-to-video quality proxies and estimation metrics. OUT/results.json
holds every number; OUT/ablations.md the tables (mean ± half the range over seeds) and
OUT/ablation_losses.png the training curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

ALL = {"depth": 1, "flow": 1, "densepose": 1, "segmentation": 1, "skeleton": 1}
UNIFIED = {"control": 0.2, "estimate": 0.3, "joint": 0.4, "t2v": 0.1}


@dataclass(frozen=True)
class Arm:
    """One ablation arm: which modalities and tasks it trains on and which model switches it flips."""

    label: str
    modalities: dict
    tasks: dict
    config: tuple[str, ...] = ()  # further config overrides (section.key=value)

    def overrides(self, steps: int) -> list[str]:
        stage = {"name": "all", "steps": steps, "modalities": self.modalities, "tasks": self.tasks}
        return [f"stages=[{json.dumps(stage)}]", f"routing.tasks={json.dumps(self.tasks)}", *self.config]


ARMS: dict[str, Arm] = {
    "full": Arm("all five modalities, unified tasks, ICL + AdaLN table", ALL, UNIFIED),
    # Table 2: which modalities are trained beside RGB
    "rgb_only": Arm("RGB only (text-to-video)", {}, {"t2v": 1.0}),
    "rgb_depth": Arm("+ depth", {"depth": 1}, UNIFIED),
    "rgb_flow": Arm("+ optical flow", {"flow": 1}, UNIFIED),
    # Table 3: which tasks
    "control_only": Arm("control only", ALL, {"control": 1.0}),
    "estimate_only": Arm("estimation only", ALL, {"estimate": 1.0}),
    "joint_only": Arm("joint generation only", ALL, {"joint": 1.0}),
    # Table 4: the two modality switches
    "no_icl": Arm("without in-context learner", ALL, UNIFIED, ("model.overrides.in_context=false",)),
    "no_adaln": Arm("without AdaLN table", ALL, UNIFIED, ("model.overrides.adaln_table=false",)),
    "no_icl_no_adaln": Arm("without both", ALL, UNIFIED,
                           ("model.overrides.in_context=false", "model.overrides.adaln_table=false")),
    # this implementation's tiny recipe vs the paper's layout with Wan's default init
    "paper_layout": Arm("side-by-side positions, default attention init", ALL, UNIFIED,
                        ("model.overrides.stream_positions=side_by_side", "model.overrides.attention_init=default")),
    "latent_norm": Arm("latents scaled to unit std per stream", ALL, UNIFIED, ("model.latent_norm=per_stream",)),
    "latent_norm_shift3": Arm("unit-std latents, timestep shift 3", ALL, UNIFIED,
                              ("model.latent_norm=per_stream", "routing.timesteps.shift=3")),
    # beyond the paper: estimation as one deterministic step from t = 1 (x_0 regression), the export
    # records the mode and the pipeline (hence the estimation metrics) runs it in one forward
    "one_step_estimate": Arm("one-step deterministic estimation", ALL, UNIFIED, ("routing.estimate_mode=one_step",)),
}

# The base recipe as the tables in docs/ablations.md were measured; arms override on top of it, so a
# later change of the shipped recipe (configs/tiny-world.yaml) does not silently change an ablation.
PINNED = ("model.latent_norm=none", "routing.timesteps.shift=1.0", "data.world.clips=64",
          "model.overrides.stream_positions=shared", "model.overrides.attention_init=local",
          "train.eval_timesteps=[0.25, 0.5, 0.75]")

TABLES = {
    2: ("Table 2 analogue: modalities trained beside RGB", ["rgb_only", "rgb_depth", "rgb_flow", "full"],
        ["val/t2v/rgb", "t2v/frame_ssim", "t2v/warping_error", "t2v/motion_smoothness"]),
    3: ("Table 3 analogue: tasks trained", ["control_only", "estimate_only", "joint_only", "full"],
        ["val/control", "val/estimate", "val/estimate/unrelated_condition", "val/joint", "estimate/depth/abs_rel",
         "estimate/segmentation/miou"]),
    4: ("Table 4 analogue: in-context learner and AdaLN table", ["no_icl_no_adaln", "no_icl", "no_adaln", "full"],
        ["val/loss", "val/control", "val/estimate", "val/joint", "val/t2v/rgb", "estimate/depth/abs_rel"]),
    5: ("Table 5 (not in the paper): stream positions, attention init, latent scaling",
        ["paper_layout", "full", "latent_norm", "latent_norm_shift3"],
        ["val/control", "val/control/unrelated_condition", "val/estimate", "val/estimate/unrelated_condition",
         "estimate/depth/abs_rel", "estimate/segmentation/miou"]),
    # val/estimate is left out: a one-step run scores it at t = 1 (the x_0 error), the full arm at the
    # eval timesteps, so the two are not the same quantity; the sampled metrics are.
    6: ("Table 6 (not in the paper): generative vs one-step deterministic estimation",
        ["full", "one_step_estimate"],
        ["estimate/depth/abs_rel", "estimate/segmentation/miou", "val/control", "val/joint", "val/t2v/rgb"]),
}
LOWER_IS_BETTER = ("val/", "warping_error", "abs_rel", "epe")


def arm_config(base: Path, arm: Arm, out: Path, seed: int, steps: int, batch: int, frames: int | None = None):
    from unityvideo.training.config import load_config

    overrides = list(PINNED) + arm.overrides(steps) + [
        f"train.run_dir={out}", f"train.seed={seed}", f"train.batch_size={batch}",
        f"train.eval_every={max(1, steps // 2)}", f"train.checkpoint_every={max(1, steps // 4)}",
        f"train.log_every={max(1, steps // 40)}",
        f"optim.warmup_steps={max(1, steps // 20)}"] + ([f"data.frames={frames}"] if frames else [])
    return load_config(base, overrides)


def finished(run_dir: Path, steps: int) -> bool:
    return (run_dir / "export" / "unityvideo.json").is_file() and last_step(run_dir) >= steps


def metric_rows(run_dir: Path) -> list[dict]:
    """The run's metrics.jsonl rows; none before the run has logged."""
    from unityvideo.training.logger import METRICS, read_metrics

    return read_metrics(run_dir) if (run_dir / METRICS).is_file() else []


def last_step(run_dir: Path) -> int:
    return max((r.get("step", 0) for r in metric_rows(run_dir)), default=0)


def final_validation(run_dir: Path) -> dict[str, float]:
    vals = [r for r in metric_rows(run_dir) if r.get("kind") == "val"]
    return {k: v for k, v in vals[-1].items() if k.startswith("val/")} if vals else {}


def sampled_metrics(run_dir: Path, world: Path, arm: Arm, seed: int, clips: int, steps: int) -> dict[str, float]:
    """Text-to-video quality proxies and estimation metrics, for whichever of the two the arm learned."""
    from unityvideo.eval.runner import evaluate

    tasks = [t for t in ("t2v", "estimate") if arm.tasks.get(t) and (t == "t2v" or arm.modalities)]
    if not tasks:
        return {}
    modalities = [m for m in ("depth", "segmentation") if m in arm.modalities] or None
    rows = evaluate(run_dir / "export", world, run_dir / "eval", tasks=tasks, modalities=modalities,
                    clips=clips, steps=steps, seed=seed, split="test", keep_videos=0)
    return {f"{r['task']}/{r['modality'] + '/' if r['task'] != 't2v' else ''}{r['metric']}": r["model"]
            for r in rows if r["model"] is not None}


def run_arm(name: str, seed: int, args) -> dict:
    from unityvideo.training import train

    run_dir = args.out / name / f"seed{seed}"
    arm = ARMS[name]
    config = arm_config(args.config, arm, run_dir, seed, args.steps, args.batch_size, args.frames)
    start = time.perf_counter()
    if not finished(run_dir, args.steps):
        train(config, resume=True if (run_dir / "checkpoints").is_dir() else None)
        if not finished(run_dir, args.steps):  # the trainer returns after a checkpoint on SIGTERM
            raise SystemExit(f"{run_dir}: training stopped at step {last_step(run_dir)}; rerun to resume")
    result_file = run_dir / "ablation.json"
    if result_file.is_file():
        return json.loads(result_file.read_text())
    from unityvideo.training.data import world_folder

    world = world_folder(config.data.world, run_dir)
    result = {"arm": name, "seed": seed, "steps": args.steps, "train_s": round(time.perf_counter() - start, 1),
              **final_validation(run_dir),
              **sampled_metrics(run_dir, world, arm, seed, args.eval_clips, args.eval_steps)}
    result_file.write_text(json.dumps(result, indent=1) + "\n")
    return result


def summarize(results: list[dict], arm: str, metric: str) -> tuple[float, float, int] | None:
    values = [r[metric] for r in results if r["arm"] == arm and r.get(metric) is not None]
    if not values:
        return None
    return statistics.fmean(values), (max(values) - min(values)) / 2, len(values)


def markdown_tables(results: list[dict], tables: list[int]) -> str:
    out = []
    for number in tables:
        title, arms, metrics = TABLES[number]
        out += [f"### {title}", "", "| arm | " + " | ".join(_header(m) for m in metrics) + " |",
                "|---|" + "---|" * len(metrics)]
        for arm in arms:
            cells = []
            for metric in metrics:
                s = summarize(results, arm, metric)
                cells.append("—" if s is None else f"{s[0]:.4f} ± {s[1]:.4f}" + (f" (n={s[2]})" if s[2] < 2 else ""))
            out.append(f"| {ARMS[arm].label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _header(metric: str) -> str:
    if metric.endswith("unrelated_condition"):  # compare with the column before it
        return f"{metric} (above the true-condition loss = condition used)"
    arrow = "↓" if any(k in metric for k in LOWER_IS_BETTER) else "↑"
    return f"{metric} {arrow}"


def plot_curves(out: Path, tables: list[int], seeds: list[int], path: Path) -> None:
    """Training loss of every arm (mean over seeds, moving average), one panel per table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 3.6), squeeze=False)
    for ax, number in zip(axes[0], tables):
        title, arms, _ = TABLES[number]
        for k, arm in enumerate(arms):
            curves = [_train_loss(out / arm / f"seed{seed}") for seed in seeds]
            curves = [c for c in curves if c]
            if not curves:
                continue
            length = min(len(c) for c in curves)
            steps = [s for s, _ in curves[0][:length]]
            mean = np.mean([[v for _, v in c[:length]] for c in curves], axis=0)
            smooth = np.convolve(mean, np.ones(5) / 5, mode="valid")
            ax.plot(steps[len(steps) - len(smooth):], smooth, color=f"C{k}", label=arm)
        ax.set(xlabel="step", yscale="log", title=title.split(":")[0])
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss (own tasks; moving average)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _train_loss(run_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in metric_rows(run_dir)
            if r.get("kind") == "train" and isinstance(r.get("loss"), float)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=Path("configs/tiny-world.yaml"), help="base recipe")
    p.add_argument("--out", type=Path, default=Path("runs/ablations"))
    p.add_argument("--tables", type=int, nargs="+", default=sorted(TABLES), choices=sorted(TABLES))
    p.add_argument("--arms", nargs="+", choices=sorted(ARMS), help="only these arms (default: the tables' arms)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--steps", type=int, default=240, help="training steps of every arm")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--frames", type=int, default=None, help="clip length (default: the base recipe's)")
    p.add_argument("--eval-clips", type=int, default=8, help="held-out clips for the sampled metrics")
    p.add_argument("--eval-steps", type=int, default=12, help="sampling steps for the sampled metrics")
    p.add_argument("--report-only", action="store_true", help="only tabulate arms that already finished")
    args = p.parse_args()

    arms = args.arms or list(dict.fromkeys(a for t in args.tables for a in TABLES[t][1]))
    results = []
    for seed in args.seeds:  # seed-major: a first complete set of tables comes early
        for arm in arms:
            result_file = args.out / arm / f"seed{seed}" / "ablation.json"
            if args.report_only:
                if result_file.is_file():
                    results.append(json.loads(result_file.read_text()))
                continue
            print(f"== {arm} seed {seed}", flush=True)
            results.append(run_arm(arm, seed, args))
            (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    tables = markdown_tables(results, args.tables)
    (args.out / "ablations.md").write_text(tables)
    plot_curves(args.out, args.tables, args.seeds, args.out / "ablation_losses.png")
    print(tables)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
