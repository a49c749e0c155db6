"""`unityvideo eval` and the report: every task on a 2-clip world test split with a tiny random checkpoint,
the row schema and baselines, the files beside the results, fixed seeds, and clear errors before any work."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from unityvideo import cli
from unityvideo.data import read_manifest, write_manifest
from unityvideo.eval.metrics import PRIMARY_METRIC
from unityvideo.eval.report import screenshot_report, find_chromium, save_animation, write_report
from unityvideo.eval.runner import EVAL_TASKS, QUALITY_METRICS, evaluate, is_better, load_videos
from unityvideo.modalities import MODALITY_NAMES
from unityvideo.models import UnityVideoTransformer
from unityvideo.models.checkpoint import CheckpointSpec
from unityvideo.pipeline import UnityVideoPipeline
from unityvideo.world.export import ExportSpec, export_world

F, H, W = 8, 32, 32
ROW_KEYS = {"task", "modality", "metric", "model", "baseline", "higher_is_better", "primary", "baseline_name",
            "baseline_oracle", "interval", "verdict", "references"}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = UnityVideoTransformer.from_preset("tiny", num_layers=1)
    with torch.no_grad():
        model.modality_table.normal_(0, 0.5)
    model.save_pretrained(folder / "transformer")
    CheckpointSpec(modalities=list(MODALITY_NAMES), tasks=list(EVAL_TASKS), frames=F, size=(H, W), fps=8,
                   shift=3.0).save(folder)
    return folder


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    export_world(ExportSpec(out=out, clips=2, frames=F, size=(H, W), split="test", workers=1))
    return out


@pytest.fixture(scope="module")
def results(checkpoint, world, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "results.json"
    code = cli.main(["eval", "--checkpoint", str(checkpoint), "--data", str(world), "--out", str(out),
                     "--steps", "2", "--device", "cpu", "--note", "training=random weights"])
    assert code == 0
    return out


def eval_cli(*argv) -> int:
    return cli.main(["eval", *map(str, argv)])


def test_rows_cover_every_task_with_the_right_schema(results):
    rows = json.loads(results.read_text())
    assert rows and all(set(row) == ROW_KEYS for row in rows)
    assert {row["task"] for row in rows} == set(EVAL_TASKS)
    by_key = {(r["task"], r["modality"], r["metric"]): r for r in rows}
    for modality, (metric, higher) in PRIMARY_METRIC.items():
        row = by_key[("estimate", modality, metric)]  # model vs the prior (the test split's, leave-one-out)
        assert row["higher_is_better"] is higher and row["primary"] and row["baseline_oracle"] is False
        assert row["model"] is None or np.isfinite(row["model"])
        assert "encoding ceiling" in {r["name"] for r in row["references"]}
        assert ("control", modality, metric) in by_key and ("joint", modality, metric) in by_key
        for task in ("control", "joint"):  # quality proxies beside the GT video's: no bar, no verdict
            for q in QUALITY_METRICS:
                quality = by_key[(task, modality, q)]
                assert quality["baseline"] is None and quality["verdict"] is None
                assert [r["name"] for r in quality["references"]] == ["GT video"]
    assert by_key[("control", "flow", "dis_epe")]["baseline_name"] == "unrelated clip's signal"  # DIS teacher
    assert by_key[("control", "depth", "abs_rel")]["baseline_name"] == "unrelated clip's signal"
    assert by_key[("estimate", "skeleton", "pck@0.1")]["baseline_name"] == "train mean pose"
    oracle = [r for r in by_key[("estimate", "skeleton", "pck@0.1")]["references"] if r["oracle"]]
    assert {r["name"] for r in oracle} == {"GT people at their mean pose", "encoding ceiling"}
    t2v = [r for r in rows if r["task"] == "t2v"]
    assert [r["metric"] for r in t2v] == list(QUALITY_METRICS) and all(r["modality"] == "rgb" for r in t2v)
    assert all(r["verdict"] is None and r["references"][0]["value"] is not None for r in t2v)


def test_table_plots_and_per_clip_file(results):
    rows = json.loads(results.read_text())
    table = results.with_suffix(".md").read_text().splitlines()
    assert table[0] == "| task | modality | metric | model | baseline | gain, 95% CI | verdict | also shown |"
    assert len(table) == 2 + len(rows)
    for task in EVAL_TASKS:
        with Image.open(results.with_name(f"results.{task}.png")) as image:
            assert image.format == "PNG"
    per_clip = json.loads(results.with_name("results.per_clip.json").read_text())
    assert per_clip["settings"]["clips"] == ["test-00000", "test-00001"] and per_clip["settings"]["steps"] == 2
    depth = [e for e in per_clip["per_clip"]
             if (e["task"], e["modality"], e["metric"]) == ("estimate", "depth", "abs_rel")]
    assert [e["clip_id"] for e in depth] == ["test-00000", "test-00001"]


def test_report_links_only_existing_animated_images(results):
    html = results.with_name("report.html").read_text()
    sources = re.findall(r'<img[^>]* src="([^"]+)"', html)
    assert sources and "training" in html and "random weights" in html
    for source in sources:
        assert (results.parent / source).is_file(), source
    videos = [s for s in sources if s.startswith("media/")]
    assert len(videos) >= 2 * (3 + 3 + 3) + 2  # estimate: 3 cells, control >= 3, joint >= 2, t2v: 2
    with Image.open(results.parent / videos[0]) as image:
        assert image.n_frames == F and min(image.size) >= 128
    panels = load_videos(results.with_name("results.videos.json"))
    assert {p["task"] for p in panels} == set(EVAL_TASKS)
    assert [c["label"] for c in panels[0]["cells"]] == ["GT RGB", "GT depth", "estimated depth"]
    assert all(c["frames"].dtype == np.uint8 and c["frames"].shape == (F, H, W, 3)
               for p in panels for c in p["cells"])


def test_seeds_are_per_clip_so_batching_does_not_change_results(checkpoint, world, tmp_path):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint)
    run = lambda batch, seed: evaluate(pipe, world, tmp_path / f"{batch}-{seed}", tasks=["t2v"], steps=2,
                                       seed=seed, batch_size=batch)
    together, alone, other = run(2, 0), run(1, 0), run(2, 1)
    assert [r["model"] for r in together] == pytest.approx([r["model"] for r in alone], abs=1e-6)
    assert [r["model"] for r in together] != [r["model"] for r in other]


@pytest.fixture()
def pipeline_calls(monkeypatch):
    """The keyword arguments of every UnityVideoPipeline call."""
    seen = []
    call = UnityVideoPipeline.__call__

    def recording(self, *args, **kwargs):
        seen.append(kwargs)
        return call(self, *args, **kwargs)

    monkeypatch.setattr(UnityVideoPipeline, "__call__", recording)
    return seen


def test_estimation_samples_with_its_own_step_count(checkpoint, world, tmp_path, pipeline_calls):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint)
    evaluate(pipe, world, tmp_path, tasks=["estimate", "t2v"], modalities=["depth"], steps=3, estimate_steps=1)
    assert {(c["task"], c["num_inference_steps"]) for c in pipeline_calls} == {("estimate", 1), ("t2v", 3)}
    with pytest.raises(ValueError, match="estimate_steps must be >= 1"):
        evaluate(pipe, world, tmp_path, tasks=["t2v"], estimate_steps=0)


def test_estimation_steps_per_modality_cover_the_reestimates(checkpoint, world, tmp_path, pipeline_calls):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint)
    evaluate(pipe, world, tmp_path, tasks=["estimate", "control"], modalities=["depth", "flow"], steps=3,
             estimate_steps={"depth": 2}, keep_videos=0)
    calls = {(c["task"], tuple(c["modalities"]) or tuple(c["conditions"]), c["num_inference_steps"])
             for c in pipeline_calls}
    assert calls == {("estimate", ("depth",), 2), ("estimate", ("flow",), 3),
                     ("control", ("depth",), 3), ("control", ("flow",), 3)}
    settings = json.loads((tmp_path / "results.per_clip.json").read_text())["settings"]
    assert settings["estimate_steps"] == {"depth": 2, "flow": 3}
    with pytest.raises(ValueError, match=r"names \['skeleton'\], which this evaluation does not estimate"):
        evaluate(pipe, world, tmp_path, tasks=["estimate"], modalities=["depth"], estimate_steps={"pose": 2})
    with pytest.raises(ValueError, match="estimate_steps must be >= 1"):
        evaluate(pipe, world, tmp_path, tasks=["estimate"], modalities=["depth"], estimate_steps={"depth": 0})


def test_count_flags_take_one_count_or_modality_counts():
    from unityvideo.eval.cli import parse_counts
    from unityvideo.eval.runner import describe_counts

    assert parse_counts(None) is None and parse_counts(["16"]) == 16
    assert parse_counts(["depth=16", "flow=1"]) == {"depth": 16, "flow": 1}
    for bad in (["flow=x"], ["16", "flow=2"], ["=2"], ["2.5"]):
        with pytest.raises(ValueError, match=r"--ensemble .*: give one count"):
            parse_counts(bad, "--ensemble")
    assert describe_counts({"depth": 4, "flow": 4}) == "4"
    assert describe_counts({"depth": 16, "flow": 1}) == "depth 16, flow 1"


def test_ensemble_applies_to_estimates_only_and_is_recorded(checkpoint, world, tmp_path, pipeline_calls):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint)
    evaluate(pipe, world, tmp_path, tasks=["estimate", "control"], modalities=["depth"], steps=1, ensemble=2)
    seen = [(c["task"], c["ensemble_size"]) for c in pipeline_calls]
    assert set(seen) == {("estimate", 2), ("control", 1)}  # control's re-estimate is an estimate too
    assert sum(task == "estimate" for task, _ in seen) > sum(task == "control" for task, _ in seen)
    settings = json.loads((tmp_path / "results.per_clip.json").read_text())["settings"]
    assert settings["ensemble"] == {"depth": 2}
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        evaluate(pipe, world, tmp_path, tasks=["t2v"], ensemble=0)


def test_ensemble_sizes_per_modality_reach_estimates_and_reestimates(checkpoint, world, tmp_path, pipeline_calls):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint)
    evaluate(pipe, world, tmp_path, tasks=["estimate", "control"], modalities=["depth", "flow"], steps=1,
             ensemble={"flow": 3}, keep_videos=0)
    sizes = {(c["task"], tuple(c["modalities"]) or tuple(c["conditions"]), c["ensemble_size"]) for c in pipeline_calls}
    # control's re-estimate of its own modality is an estimate with that modality's size
    assert sizes == {("estimate", ("depth",), 1), ("estimate", ("flow",), 3),
                     ("control", ("depth",), 1), ("control", ("flow",), 1)}
    settings = json.loads((tmp_path / "results.per_clip.json").read_text())["settings"]
    assert settings["ensemble"] == {"depth": 1, "flow": 3}
    with pytest.raises(ValueError, match=r"ensemble names \['segmentation'\]"):
        evaluate(pipe, world, tmp_path, tasks=["estimate"], modalities=["depth"], ensemble={"segmentation": 2})


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(UnityVideoPipeline, "from_pretrained", refuse)


def test_errors_before_any_work(checkpoint, world, tmp_path, no_model, capsys):
    records = read_manifest(world / "manifest.csv")
    for record in records:
        record.raw = None
    no_raw = write_manifest(tmp_path / "no-raw.csv", records)
    out = tmp_path / "r.json"
    cases = [
        (["--checkpoint", checkpoint, "--data", no_raw], "no row has raw ground truth"),
        (["--checkpoint", checkpoint, "--data", world, "--modalities", "colour"], "unknown modality"),
        (["--checkpoint", tmp_path / "missing", "--data", world], "does not exist"),
        (["--checkpoint", checkpoint, "--data", tmp_path / "nowhere"], "no such file or folder"),
        (["--checkpoint", checkpoint, "--data", world, "--split", "train"], "split 'train'"),
        (["--checkpoint", checkpoint, "--data", world, "--tasks", "paint"], "unknown tasks"),
        (["--checkpoint", checkpoint, "--data", world, "--ensemble", "flow=x"], "--ensemble 'flow=x': give one count"),
        (["--checkpoint", checkpoint, "--data", world, "--modalities", "depth", "--ensemble", "flow=4"],
         "ensemble names ['flow']"),
        (["--checkpoint", checkpoint, "--data", world, "--ensemble", "0"], "ensemble must be >= 1"),
    ]
    for argv, message in cases:
        assert eval_cli(*argv, "--out", out) == 2
        assert message in capsys.readouterr().err
    assert eval_cli("--checkpoint", checkpoint, "--data", world, "--out", tmp_path / "r.csv") == 2
    assert not out.exists()


def test_modalities_and_tasks_the_checkpoint_lacks(tmp_path, world, no_model, capsys):
    folder = tmp_path / "ckpt"
    UnityVideoTransformer.from_preset("tiny", num_layers=1).save_pretrained(folder / "transformer")
    CheckpointSpec(modalities=["depth"], tasks=["estimate"], frames=F, size=(H, W)).save(folder)
    assert eval_cli("--checkpoint", folder, "--data", world, "--out", tmp_path / "r.json", "--modalities", "flow") == 2
    assert "has not learned" in capsys.readouterr().err
    assert eval_cli("--checkpoint", folder, "--data", world, "--out", tmp_path / "r.json", "--tasks", "joint") == 2
    assert "trained for ['estimate'] only" in capsys.readouterr().err


def test_write_report_standalone(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 16, 24, 3), dtype=np.uint8)
    row = {"task": "estimate", "modality": "depth", "metric": "abs_rel", "model": 0.1, "baseline": 0.3,
           "higher_is_better": False, "primary": True, "baseline_name": "train mean disparity",
           "baseline_oracle": False, "interval": [0.1, 0.3], "verdict": "better", "references": []}
    rows = [row, {**row, "modality": "flow", "metric": "epe", "model": 2.0, "baseline": 1.0, "verdict": "worse"},
            {**row, "modality": "segmentation", "metric": "miou", "model": 0.01, "baseline": 0.0, "verdict": "tie"}]
    assert [is_better(r) for r in rows] == [True, False, None]
    videos = [{"task": "estimate", "modality": "depth", "clip_id": "c<0>", "caption": "a & b",
               "cells": [{"label": "GT RGB", "frames": frames}]}]
    loss = save_animation(tmp_path / "elsewhere.gif", frames)  # any image stands in for the loss curve
    page = write_report(tmp_path / "report", rows, videos, loss_curve_png=loss, notes={"steps": 10})
    html = page.read_text()
    assert "c&lt;0&gt;" in html and "a &amp; b" in html and "<script" not in html and "http" not in html
    assert 'class="num better"' in html and 'class="num worse"' in html
    for source in re.findall(r'src="([^"]+)"', html):
        assert (page.parent / source).is_file()
    with Image.open(next((page.parent / "media").iterdir())) as image:
        assert image.n_frames == 3 and image.size == (24 * 8, 16 * 8)  # nearest upscale to >= 128 px


@pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")
def test_screenshot_report(results, tmp_path):
    png = screenshot_report(results.with_name("report.html"), tmp_path / "shot.png", height=800)
    with Image.open(png) as image:
        assert image.size == (1280, 800)
        assert len(np.unique(np.asarray(image.convert("L")))) > 10  # rendered content, not a blank page


def test_ensemble_benchmark_scores_each_k_and_steps_on_the_same_clips(checkpoint, world, tmp_path, capsys):
    from test_benchmarks import load

    out = tmp_path / "ensemble.json"
    load("estimate_ensemble").main(["--checkpoint", str(checkpoint), "--data", str(world), "--clips", "2",
                                    "--steps", "1", "2", "--ensembles", "1", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    assert [(run["ensemble"], run["steps"]) for run in result["runs"]] == [(1, 1), (2, 1), (1, 2), (2, 2)]
    keys = [[(r["modality"], r["metric"], r["baseline"]) for r in run["rows"]] for run in result["runs"]]
    assert all(k == keys[0] for k in keys) and {m for m, _, _ in keys[0]} == set(MODALITY_NAMES)
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("wall time: K=1 S=1")


def test_densepose_error_counts_tell_margin_noise_from_false_bodies():
    from test_benchmarks import load

    part = np.zeros((1, 4, 4), np.float32)
    part[0, 0, :2] = 1   # a found body pixel and a false one at the background margin (part 1)
    part[0, 1, 0] = 6    # a false part-6 pixel: a hallucinated body, not rounding noise
    gt = np.zeros((1, 4, 4))
    gt[0, 0, 0] = gt[0, 2, 2] = 3
    counts = load("densepose_errors").clip_errors(part, gt)
    assert counts == {"gt_body_px": 2, "found_body_px": 1, "false_body_px": 2, "false_at_margin_px": 1,
                      "false_median_part": 3.5}


def test_densepose_error_benchmark_writes_a_row_per_clip(checkpoint, world, tmp_path, capsys):
    from test_benchmarks import load

    out = tmp_path / "densepose.json"
    load("densepose_errors").main(["--checkpoint", str(checkpoint), "--data", str(world), "--clips", "2",
                                   "--steps", "1", "--ensembles", "1", "2", "--out", str(out)])
    result = json.loads(out.read_text())
    rows = result["clips"]
    assert len(rows) == 2 and all(r["found_body_px"] <= r["gt_body_px"] for r in rows)
    assert all(r["false_at_margin_px"] <= r["false_body_px"] for r in rows)
    votes = {(r["clip_id"], r["ensemble"], r["vote"]): r for r in result["votes"]}
    assert len(votes) == 2 * 2 * 2
    for clip in {r["clip_id"] for r in rows}:  # one sample: both votes are that sample
        assert votes[clip, 1, "two-level"] == {**votes[clip, 1, "one-level"], "vote": "two-level"}
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("false body pixels:")


def test_one_level_densepose_vote_loses_a_body_split_between_parts():
    from test_benchmarks import load

    bench = load("densepose_errors")
    parts = np.array([3, 4, 0, 0, 5])[:, None]  # 3 of 5 samples see a body, in three different parts
    assert bench.one_level_vote(parts).tolist() == [0]
    scores = bench.vote_scores(np.array([[1, 0]]), np.array([[1, 1]]))
    assert scores == {"part_miou": 0.5, "body_iou": 0.5, "body_px": 1, "gt_body_px": 2}


def test_flow_errors_split_still_and_moving_pixels():
    from test_benchmarks import load

    gt = np.zeros((1, 2, 2, 2))
    gt[0, 0, 0] = (3.0, 4.0)                 # one moving pixel (5 px), three still
    pred = np.zeros_like(gt)
    pred[0, 0, 0] = (3.0, 0.0)               # moving pixel off by 4 px
    pred[0, 1, :] = (0.3, 0.0)               # two still pixels with the same 0.3 px drift
    errors = load("flow_errors").clip_errors(pred, gt)
    assert errors["still_share"] == 0.75 and errors["zero_epe"] == pytest.approx(1.25)
    assert errors["still_epe"] == pytest.approx(0.2) and errors["still_bias_px"] == pytest.approx(0.2)
    assert errors["moving_epe"] == pytest.approx(4.0) and errors["moving_zero_epe"] == pytest.approx(5.0)
    assert errors["epe"] == pytest.approx((4.0 + 0.6) / 4)
    valid = np.ones((1, 2, 2), bool)
    valid[0, 0, 0] = False  # without the moving pixel only the drift is left
    errors = load("flow_errors").clip_errors(pred, gt, valid=valid)
    assert errors["moving_epe"] is None and errors["epe"] == pytest.approx(0.2) and errors["zero_epe"] == 0


def test_flow_error_benchmark_writes_a_row_per_clip_and_k(checkpoint, world, tmp_path, capsys):
    from test_benchmarks import load

    out = tmp_path / "flow.json"
    load("flow_errors").main(["--checkpoint", str(checkpoint), "--data", str(world), "--clips", "2",
                              "--ensembles", "1", "2", "--out", str(out)])
    runs = json.loads(out.read_text())["runs"]
    assert [run["ensemble"] for run in runs] == [1, 2] and all(len(run["clips"]) == 2 for run in runs)
    assert all(0 <= r["still_share"] <= 1 and r["epe"] >= 0 for run in runs for r in run["clips"])
    assert capsys.readouterr().out.rstrip().splitlines()[-1].startswith("mean K=2:")
