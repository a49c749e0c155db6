"""The main job end to end at a toy size, and the shipped checkpoint as the default of `generate`."""

from __future__ import annotations

import json

import numpy as np

from unityvideo.assets import DEFAULT_CHECKPOINT
from unityvideo.cli import main
from unityvideo.data import read_video
from unityvideo.demo import DEFAULT_ENSEMBLE
from unityvideo.models.checkpoint import load_checkpoint_spec

ROW_KEYS = {"task", "modality", "metric", "model", "baseline", "higher_is_better", "primary", "baseline_name",
            "baseline_oracle", "interval", "verdict", "references"}


def test_shipped_checkpoint_is_complete():
    spec = load_checkpoint_spec(DEFAULT_CHECKPOINT)
    assert set(spec.modalities) == {"depth", "flow", "segmentation", "skeleton", "densepose"}
    assert set(spec.tasks) == {"control", "estimate", "joint", "t2v"} and spec.step > 0
    assert (DEFAULT_CHECKPOINT / "config.yaml").is_file() and (DEFAULT_CHECKPOINT / "metrics.jsonl").is_file()


def test_generate_uses_the_shipped_checkpoint_by_default(tmp_path):
    out = tmp_path / "t2v.mp4"
    assert main(["generate", "--task", "t2v", "--prompt", "a red ball rolls to the left", "--steps", "2",
                 "--out", str(out)]) == 0
    spec = load_checkpoint_spec(DEFAULT_CHECKPOINT)
    assert read_video(out).shape == (spec.frames, *spec.size, 3)


def test_demo_runs_every_task_and_writes_report_and_metrics(tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "2", "--train-clips", "4", "--test-clips", "2",
                 "--eval-steps", "2"]) == 0
    rows = json.loads((out / "metrics.json").read_text())
    assert rows and all(set(r) == ROW_KEYS for r in rows)
    assert {r["task"] for r in rows} == {"estimate", "control", "joint", "t2v"}
    estimated = {r["modality"] for r in rows if r["task"] == "estimate" and r["primary"] and r["baseline"] is not None}
    assert estimated == {"depth", "flow", "segmentation", "skeleton", "densepose"}
    assert all(np.isfinite(r["model"]) for r in rows if r["task"] == "estimate" and r["metric"] in ("abs_rel", "epe"))
    settings = json.loads((out / "eval" / "results.per_clip.json").read_text())["settings"]
    # the default estimation recipe, each count capped at --eval-steps
    assert settings["estimate_steps"] == {"depth": 2, "flow": 1, "segmentation": 1, "skeleton": 2, "densepose": 2}
    assert settings["ensemble"] == DEFAULT_ENSEMBLE
    page = (out / "report.html").read_text()
    assert "fine-tuned for 2 steps" in page and "<table" in page
    assert (out / "loss.png").is_file() and (out / "run" / "export" / "unityvideo.json").is_file()


def test_results_files_name_the_shipped_checkpoint_by_step_not_path(tmp_path):
    from unityvideo.assets import checkpoint_label

    step = load_checkpoint_spec(DEFAULT_CHECKPOINT).step
    assert checkpoint_label(DEFAULT_CHECKPOINT) == f"shipped tiny-world (step {step})"
    assert checkpoint_label(tmp_path) == str(tmp_path)
