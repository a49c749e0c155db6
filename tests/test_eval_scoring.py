"""Scoring a split: pooled metrics, the prior baselines, bootstrap verdicts, and oracle tests through
`evaluate` (a pipeline that answers with the ground truth scores perfectly and beats every bar; one
that answers with the bar ties it)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from unityvideo.eval.baselines import Prior, estimate_baselines, oracle_mean_pose, prior_stats
from unityvideo.eval.compare import Comparison, bootstrap_improvement, compare_rows, min_effect, verdict
from unityvideo.eval.metrics import (PRIMARY_METRIC, Pooled, densepose_metrics, modality_scores, pool,
                                     segmentation_metrics)
from unityvideo.eval.runner import encoding_ceiling, evaluate, load_eval_clips, select_records
from unityvideo.modalities import MODALITY_NAMES
from unityvideo.models.checkpoint import CheckpointSpec
from unityvideo.pipeline import UnityVideoPipeline
from unityvideo.world import WorldConfig
from unityvideo.world.export import ExportSpec, export_world

F, H, W = 6, 64, 64
PERFECT = {"abs_rel": 0.0, "delta1": 1.0, "epe": 0.0, "epe_moving": 0.0, "fl_all": 0.0, "miou": 1.0, "fg_iou": 1.0,
           "pck@0.05": 1.0, "pck@0.1": 1.0, "pck@0.2": 1.0, "pck17@0.1": 1.0, "part_miou": 1.0, "body_iou": 1.0,
           "uv_error": 0.0}


# ----- pooling ---------------------------------------------------------------------------------------


def test_pooled_densepose_gives_an_empty_prediction_nothing_for_person_free_clips():
    person = np.zeros((1, 4, 4, 3))
    person[0, :2, :2] = (3, 0.5, 0.5)
    nobody = np.zeros((1, 4, 4, 3))
    clips = [(person, person), (nobody, nobody), (nobody, nobody)]  # (gt, gt)
    empty = [modality_scores("densepose", np.zeros_like(gt), gt) for gt, _ in clips]
    perfect = [modality_scores("densepose", gt, gt) for gt, _ in clips]
    # A per-clip mean used to give the empty prediction 1.0 on each person-free clip: 2/3 here.
    assert pool(empty)["part_miou"] == 0.0 and pool(empty)["body_iou"] == 0.0
    assert pool(perfect)["part_miou"] == 1.0
    assert np.isnan(densepose_metrics(nobody, nobody)["part_miou"])


def test_pooled_part_iou_sums_intersections_and_unions_over_clips():
    gt_a, pred_a = np.zeros((1, 1, 4, 3)), np.zeros((1, 1, 4, 3))
    gt_a[0, 0, :2, 0], pred_a[0, 0, :1, 0] = 1, 1       # part 1: inter 1, union 2
    gt_b, pred_b = np.zeros((1, 1, 4, 3)), np.zeros((1, 1, 4, 3))
    gt_b[0, 0, :, 0], pred_b[0, 0, :, 0] = 1, 1
    gt_b[0, 0, 3, 0] = 2                                # part 1: inter 3, union 4; part 2: inter 0, union 1
    scores = [modality_scores("densepose", pred_a, gt_a), modality_scores("densepose", pred_b, gt_b)]
    # part 1: (1 + 3) / (2 + 4) pooled (a per-clip mean would give 5 / 8); part 2: 0; mean over both parts
    assert pool(scores)["part_miou"] == pytest.approx((4 / 6 + 0) / 2)


def test_pooled_segmentation_and_flow():
    empty = np.zeros((1, 4, 4), np.int64)
    blob = empty.copy()
    blob[0, :2, :2] = 1
    scores = [modality_scores("segmentation", empty, blob), modality_scores("segmentation", empty, empty)]
    assert pool(scores) == {"miou": 0.0, "fg_iou": 0.0}
    assert np.isnan(segmentation_metrics(empty, empty)["miou"])
    still, moving = np.zeros((1, 1, 3, 2)), np.zeros((1, 1, 1, 2))
    moving[..., 0] = 2.0
    flow = [modality_scores("flow", still, still), modality_scores("flow", np.zeros_like(moving), moving)]
    assert pool(flow)["epe"] == pytest.approx(2.0 / 4)  # pixels pooled: 3 still + 1 moving
    assert pool(flow)["epe_moving"] == pytest.approx(2.0)


def test_pooled_arithmetic():
    total = Pooled.ratio(1, 2) + Pooled.ratio(3, 2) + Pooled.mean(float("nan"))
    assert total.value == pytest.approx(1.0)
    assert np.isnan(Pooled.ratio(0, 0).value)


# ----- verdicts --------------------------------------------------------------------------------------


def _fractions(values):
    return [{"miou": Pooled.ratio(v, 1)} for v in values]


def test_verdict_needs_a_minimum_effect_and_an_interval_above_zero():
    assert verdict("miou", 0.01, 0.0, (0.005, 0.015)) == "tie"       # 0.01 vs 0 is below the floor
    assert verdict("miou", 0.30, 0.10, (0.15, 0.25)) == "better"
    assert verdict("miou", 0.30, 0.10, (-0.05, 0.4)) == "tie"         # the clips do not agree
    assert verdict("epe", 0.90, 1.00, (0.08, 0.12)) == "better"       # 10 % below the baseline
    assert verdict("epe", 0.98, 1.00, (0.01, 0.03)) == "tie"          # 2 %: below the floor
    assert verdict("epe", 1.20, 1.00, (-0.3, -0.1)) == "worse"
    assert min_effect("abs_rel", 0.4) == pytest.approx(0.02) and min_effect("pck@0.1", 0.4) == 0.02
    assert verdict("miou", None, 0.1, None) is None


def test_bootstrap_interval_of_a_consistent_and_of_an_inconsistent_gain():
    model, base = _fractions([0.5, 0.6, 0.55, 0.52]), _fractions([0.1, 0.2, 0.15, 0.12])
    low, high = bootstrap_improvement(model, base, "miou")
    assert 0.35 < low <= 0.4 <= high < 0.45
    mixed = bootstrap_improvement(_fractions([0.9, 0.0, 0.9, 0.0]), _fractions([0.0, 0.9, 0.0, 0.9]), "miou")
    assert mixed[0] < 0 < mixed[1]
    errors = [{"epe": Pooled.ratio(v, 1)} for v in (1.0, 1.1)]
    assert bootstrap_improvement(errors, [{"epe": Pooled.ratio(2.0, 1)}] * 2, "epe")[0] > 0  # lower is better
    assert bootstrap_improvement(model[:1], base[:1], "miou") is None


def test_rows_name_the_bar_and_show_references_without_a_verdict():
    model = _fractions([0.5, 0.6])
    rows = compare_rows("estimate", "segmentation", model,
                        [Comparison("prior", False, _fractions([0.1, 0.1])),
                         Comparison("oracle", True, _fractions([0.9, 0.9]), bar=False)], primary="miou")
    assert len(rows) == 1
    row = rows[0]
    assert row["baseline"] == pytest.approx(0.1) and row["baseline_name"] == "prior" and row["baseline_oracle"] is False
    assert row["primary"] and row["higher_is_better"] and row["verdict"] == "better"
    assert row["references"] == [{"name": "oracle", "oracle": True, "value": pytest.approx(0.9)}]
    with pytest.raises(ValueError, match="one baseline to beat"):
        compare_rows("estimate", "segmentation", model, [Comparison("a", False, model), Comparison("b", False, model)])


# ----- baselines -------------------------------------------------------------------------------------


def test_prior_is_the_training_mean_and_leave_one_out_subtracts_a_clip():
    depth_a, depth_b = np.full((2, 2, 2), 2.0), np.full((2, 2, 2), 4.0)
    depth_b[:, 0, 0] = np.inf  # sky: disparity 0
    stats = [prior_stats({"depth": depth_a}), prior_stats({"depth": depth_b})]
    prior = Prior.fit(stats)
    predicted = prior.predict("depth", (1, 2, 2))
    assert predicted[0, 0, 0] == pytest.approx(1 / ((0.5 + 0.0) / 2)) and predicted[0, 1, 1] == pytest.approx(1 / 0.375)
    assert prior.without(stats[1]).predict("depth", (1, 2, 2)) == pytest.approx(np.full((1, 2, 2), 2.0))
    keypoints = np.zeros((2, 1, 17, 3))
    keypoints[..., 2] = 2
    keypoints[0, 0, :, :2], keypoints[1, 0, :, :2] = 10, 20
    keypoints[1, 0, 3, 2] = 0  # unlabelled joints do not count
    pose = Prior.fit([prior_stats({"skeleton": keypoints})]).predict("skeleton", (3, 2, 17, 3))
    assert pose.shape == (3, 1, 17, 3) and pose[0, 0, 0, :2].tolist() == [15, 15] and pose[0, 0, 3, :2].tolist() == [10, 10]
    with pytest.raises(ValueError, match="no segmentation ground truth"):
        prior.predict("segmentation", (1, 2, 2))


def test_the_skeleton_oracle_is_marked_and_is_not_the_bar():
    gt = np.zeros((2, 1, 17, 3))
    gt[..., 2] = 2
    prior = Prior.fit([prior_stats({"skeleton": gt})])
    baselines = {b.name: b for b in estimate_baselines("skeleton", prior, gt)}
    assert [b.name for b in baselines.values() if b.bar] == ["train mean pose"]
    assert baselines["GT people at their mean pose"].oracle and not baselines["train mean pose"].oracle
    np.testing.assert_array_equal(baselines["GT people at their mean pose"].prediction, oracle_mean_pose(gt))


# ----- oracle tests through evaluate -----------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    config = WorldConfig(persons=(1, 2))
    export_world(ExportSpec(out=out, clips=4, frames=F, size=(H, W), split="train", workers=1, world=config))
    export_world(ExportSpec(out=out, clips=3, frames=F, size=(H, W), split="test", workers=1, world=config))
    return out


@pytest.fixture(scope="module")
def clips(world):
    found, _ = load_eval_clips(select_records(world / "manifest.csv"), F, (H, W), MODALITY_NAMES)
    return {c.rgb.tobytes(): c for c in found}


class AnsweringPipeline(UnityVideoPipeline):
    """Answers every estimate with `answer(modality, clip)`; knows the clips by their RGB."""

    def __init__(self, clips, answer):
        self.spec = CheckpointSpec(modalities=list(MODALITY_NAMES), tasks=["estimate"], frames=F, size=(H, W))
        self.clips, self.answer = clips, answer

    def set_progress_bar_config(self, **kwargs):
        pass

    def __call__(self, video, modalities, **kwargs):
        found = [self.clips[np.ascontiguousarray(v).tobytes()] for v in video]
        return SimpleNamespace(raw={m: [self.answer(m, c) for c in found] for m in modalities})


def _estimate_rows(world, clips, answer, tmp_path):
    rows = evaluate(AnsweringPipeline(clips, answer), world, tmp_path, tasks=["estimate"], keep_videos=0)
    return {(r["modality"], r["metric"]): r for r in rows}


def test_the_ground_truth_scores_perfectly_and_beats_every_bar(world, clips, tmp_path):
    rows = _estimate_rows(world, clips, lambda m, clip: clip.raw[m], tmp_path)
    for modality, (metric, higher) in PRIMARY_METRIC.items():
        row = rows[(modality, metric)]
        assert row["primary"] and row["higher_is_better"] is higher
        assert row["baseline_oracle"] is False and row["baseline_name"]
        assert row["verdict"] == "better", row
        names = {r["name"] for r in row["references"]}
        assert "encoding ceiling" in names
    for (modality, metric), row in rows.items():
        assert row["model"] == pytest.approx(PERFECT[metric], abs=1e-9), (modality, metric)
    settings = json.loads((tmp_path / "results.per_clip.json").read_text())["settings"]
    assert settings["prior"].startswith("training split") and "(4 clips)" in settings["prior"]


def test_answering_with_the_bar_ties_it(world, clips, tmp_path):
    records = select_records(world / "manifest.csv", "train")
    train, _ = load_eval_clips(records, F, (H, W), MODALITY_NAMES)
    prior = Prior.fit([prior_stats(c.raw) for c in train])
    bar = lambda m, clip: next(b.prediction for b in estimate_baselines(m, prior, clip.raw[m]) if b.bar)
    rows = _estimate_rows(world, clips, bar, tmp_path)
    for modality, (metric, _) in PRIMARY_METRIC.items():
        row = rows[(modality, metric)]
        assert row["model"] == pytest.approx(row["baseline"], abs=1e-12) and row["verdict"] == "tie", row


def test_without_a_training_split_the_prior_is_leave_one_out(world, clips, tmp_path):
    test_only = tmp_path / "test-only.csv"
    lines = (world / "manifest.csv").read_text().splitlines()
    test_only.write_text("\n".join([lines[0]] + [l.replace("clips/", str(world / "clips") + "/")
                                                  for l in lines[1:] if ",test," in l]) + "\n")
    evaluate(AnsweringPipeline(clips, lambda m, clip: clip.raw[m]), test_only, tmp_path, tasks=["estimate"],
             modalities=["depth"], keep_videos=0)
    settings = json.loads((tmp_path / "results.per_clip.json").read_text())["settings"]
    assert settings["prior"] == "leave-one-out over the evaluated clips"


def test_the_skeleton_encoding_keeps_the_scored_joints_of_one_person_at_64_px():
    # Where two people's drawings overlap the picture cannot tell them apart (docs/demo.md); alone, a
    # person's 13 scored joints survive encode -> decode.
    from unityvideo.modalities import get_modality
    from unityvideo.world.render import generate_clip

    skeleton = get_modality("skeleton")
    scores = []
    for index in range(4):
        gt = generate_clip(0, "test", index, frames=4, size=(H, W), config=WorldConfig(persons=(1, 1))).skeleton
        scores.append(modality_scores("skeleton", skeleton.decode(skeleton.encode(gt, size=(H, W))), gt))
    assert pool(scores)["pck@0.1"] >= 0.95


# ----- the scoring benchmarks ------------------------------------------------------------------------


def test_floor_benchmark_scores_bars_oracle_and_ceiling_without_a_model(world, tmp_path, capsys):
    from test_benchmarks import load

    out = tmp_path / "floors.json"
    load("estimate_floors").main(["--data", str(world), "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["clips"] == 3 and result["prior"].startswith("training split")
    skeleton = result["modalities"]["skeleton"]
    assert set(skeleton) == {"train mean pose", "no person", "GT people at their mean pose (oracle)",
                             "encoding ceiling"}
    assert skeleton["no person"]["pooled"]["pck@0.1"] == 0.0
    assert result["modalities"]["densepose"]["empty IUV"]["pooled"]["part_miou"] == 0.0
    assert result["modalities"]["depth"]["encoding ceiling"]["pooled"]["abs_rel"] < 0.01
    assert "| skeleton | encoding ceiling |" in capsys.readouterr().out


def test_estimate_mode_table_reports_both_modes_with_their_verdicts():
    from test_benchmarks import load

    row = {"modality": "flow", "metric": "epe", "baseline": 0.5, "baseline_name": "zero flow",
           "higher_is_better": False}
    results = [{"mode": mode, "seed": seed, "train_s": 10.0, "eval_s": 2.0,
                "rows": [{**row, "model": value, "verdict": verdict}]}
               for mode, seed, value, verdict in [("generative", 0, 0.6, "worse"), ("generative", 1, 0.5, "tie"),
                                                  ("one_step", 0, 0.3, "better"), ("one_step", 1, 0.2, "better")]]
    text = load("estimate_modes").table(results)
    assert "| flow | epe ↓ | 0.500 (zero flow) | 0.550 ± 0.050 (worse/tie) | 0.250 ± 0.050 (better/better) |" in text
