"""The benchmark: run a UnityVideo checkpoint on clips with ground truth and score every task.

    rows = evaluate("ckpt/", "world-test/", "eval/", clips=16, steps=30)

Four task families, each clip with a fixed seed (a function of (seed, clip index), so the numbers do
not depend on the batch size):

    estimate  RGB clip -> modality        modality metrics vs the ground truth; the bar: a prior fitted
                                          on the training split (`baselines.Prior`, not an oracle);
                                          shown beside it: the trivial constant, the skeleton's oracle
                                          mean pose and the encoding's ceiling (GT encoded + decoded)
    control   GT modality -> RGB          controllability: `control_agreement` of the control with the
                                          model's own re-estimate from the generated RGB (and, for flow,
                                          with OpenCV's DIS flow of it: metrics prefixed `dis_`); the
                                          bar: the same video scored against an unrelated clip's
                                          control. Plus quality proxies of the generated RGB.
    joint     caption -> RGB + modality   cross-modal consistency: the joint modality vs the model's
                                          re-estimate from the joint RGB (flow also vs DIS); the bar:
                                          the re-estimate against an unrelated clip's joint modality.
                                          Plus quality proxies.
    t2v       caption -> RGB              quality proxies: frame_ssim, motion_smoothness, warping_error
                                          (along DIS flow), beside those of the GT videos (a
                                          reference, not a bar: a frozen video has a perfect SSIM).

Every metric is pooled over the clips (`metrics.Pooled`). A row (`compare.compare_rows`) is {"task",
"modality", "metric", "model", "baseline", "higher_is_better", "primary", "baseline_name",
"baseline_oracle", "interval", "verdict", "references"}: the bar's value and name, the bootstrap
interval of the improvement over it, the verdict (better / worse / tie, with a minimum effect) and
the references shown beside it. Files written to out_dir: NAME.json (rows), NAME.md (a table),
NAME.per_clip.json (settings + one entry per clip and metric), NAME.<task>.png (model vs bar on the
primary metrics), NAME.videos.json/.npz (the first clips' videos as pictures, for
`report.write_report`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from unityvideo.data.manifest import ClipRecord, read_manifest
from unityvideo.data.raw import RawReadError, load_raw
from unityvideo.data.transforms import CropPlan, crop_raw
from unityvideo.data.video import read_video
from unityvideo.eval.baselines import Prior, estimate_baselines, prior_stats
from unityvideo.eval.compare import DIS_PREFIX, Comparison, compare_rows, is_better
from unityvideo.eval.metrics import PRIMARY_METRIC, Pooled, control_agreement, modality_scores
from unityvideo.eval.quality import dis_flow, frame_ssim, motion_smoothness, warping_error
from unityvideo.eval.results import EVAL_TASKS, load_videos, write_results
from unityvideo.modalities import MODALITY_NAMES, canonical_name, default_max_flow, depth_near, get_modality, \
    picture_hints

__all__ = ["evaluate", "EVAL_TASKS", "QUALITY_METRICS", "EvalClip", "load_eval_clips", "resolve_manifest", "aggregate",
           "write_results", "load_videos", "is_better", "modality_counts", "describe_counts"]

log = logging.getLogger(__name__)

QUALITY_METRICS = ("frame_ssim", "motion_smoothness", "warping_error")
UNRELATED = "unrelated clip's signal"   # the bar of control and joint
REAL_CLIPS = "GT video"                 # the reference of the quality proxies
CEILING = "encoding ceiling"            # GT through the modality's video encoding and back
PRIOR_CLIPS = 64                        # training clips the estimation prior is fitted on


# ----- clips with ground truth ----------------------------------------------------------------------


@dataclass
class EvalClip:
    """One clip cut to the evaluation geometry: its RGB, raw modalities and the hints to encode/decode them."""

    index: int
    clip_id: str
    caption: str
    rgb: np.ndarray                      # uint8 (F, H, W, 3)
    raw: dict[str, np.ndarray]           # modality -> raw ground truth (WorldClip layout)
    flow_valid: np.ndarray | None        # (F, H, W) bool, when the raw has it
    hints: dict[str, Any]                # modalities.picture_hints: for encode / decode / visualize

    def metric_options(self, modality: str) -> dict[str, Any]:
        return {"valid": self.flow_valid} if modality == "flow" and self.flow_valid is not None else {}


def resolve_manifest(data: str | Path) -> Path:
    """A dataset folder (its manifest.csv / manifest.jsonl) or a manifest file."""
    data = Path(data)
    if data.is_dir():
        for name in ("manifest.csv", "manifest.jsonl"):
            if (data / name).is_file():
                return data / name
        raise FileNotFoundError(f"{data}: no manifest.csv or manifest.jsonl in this folder; pass a dataset "
                                "folder written by `unityvideo world` or a manifest file")
    if not data.exists():
        raise FileNotFoundError(f"--data {data}: no such file or folder")
    return data


def select_records(manifest: Path, split: str | None = None) -> list[ClipRecord]:
    """The manifest's rows with raw ground truth, of `split` (default: 'test' when the manifest has
    test rows, else every row)."""
    records = read_manifest(manifest)
    with_raw = [r for r in records if r.raw is not None]
    if not with_raw:
        raise ValueError(f"{manifest}: no row has raw ground truth (the 'raw' column, a raw.npz per clip); "
                         "evaluation needs it: render a test split with `unityvideo world --split test` "
                         "or annotate the clips first")
    splits = sorted({str(r.split) for r in with_raw})
    if split is None:
        split = "test" if "test" in splits else None
    chosen = [r for r in with_raw if split is None or r.split == split]
    if not chosen:
        raise ValueError(f"{manifest}: no clip with raw ground truth in split {split!r}; its splits are {splits}")
    return chosen


def _crop_plan(source: tuple[int, int], target: tuple[int, int]) -> CropPlan:
    """A centred crop to `target`, no resize (resampling ground truth would invent it)."""
    return CropPlan(source, source, target, (source[0] - target[0]) // 2, (source[1] - target[1]) // 2)


def _clip_hints(record: ClipRecord, raw: dict, depth: np.ndarray | None, size: tuple[int, int]) -> dict:
    meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
    near = record.depth_near or meta.get("depth_near") or (depth_near(depth) if depth is not None else 1.0)
    max_flow = record.flow_max or meta.get("flow_max") or default_max_flow(*size)
    return picture_hints(size, near, max_flow)


def load_eval_clip(record: ClipRecord, index: int, frames: int, size: tuple[int, int] | None,
                   modalities: Sequence[str]) -> EvalClip:
    """Read a clip's raw ground truth and cut the first `frames` frames, centre-cropped to `size`
    (None: the clip's own size). Raises ValueError / RawReadError for a clip that cannot be used."""
    raw = load_raw(record.raw)
    missing = [m for m in modalities if m not in raw]
    if missing:
        raise ValueError(f"{record.raw}: no raw {missing} (it has {sorted(k for k in raw if k != 'meta')})")
    rgb = raw["rgb"] if "rgb" in raw else read_video(record.rgb)
    total, height, width = rgb.shape[:3]
    size = tuple(size or (height, width))
    if total < frames or height < size[0] or width < size[1]:
        raise ValueError(f"{record.clip_id}: {total} frames of {height}x{width}, the evaluation needs {frames} "
                         f"frames of at least {size[0]}x{size[1]}")
    arrays = {k: v for k, v in raw.items() if isinstance(v, np.ndarray)}
    arrays["rgb"] = rgb
    cut = crop_raw(arrays, np.arange(frames), total, _crop_plan((height, width), size))
    return EvalClip(index=index, clip_id=record.clip_id, caption=record.caption, rgb=np.ascontiguousarray(cut["rgb"]),
                    raw={m: cut[m] for m in modalities}, flow_valid=cut.get("flow_valid"),
                    hints=_clip_hints(record, raw, cut.get("depth"), size))


def load_eval_clips(records: Sequence[ClipRecord], frames: int, size: tuple[int, int] | None,
                    modalities: Sequence[str]) -> tuple[list[EvalClip], dict[str, str]]:
    """Every usable clip (cut alike; size None = the first clip's) and the skipped ones with the reason."""
    clips, skipped = [], {}
    for record in records:
        try:
            clip = load_eval_clip(record, len(clips), frames, size, modalities)
        except (ValueError, RawReadError) as error:
            log.warning("skipping clip %s: %s", record.clip_id, error)
            skipped[record.clip_id] = str(error)
            continue
        size = size or clip.rgb.shape[1:3]
        clips.append(clip)
    return clips, skipped


# ----- the pipeline ----------------------------------------------------------------------------------


def _clip_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _estimate_uses_caption(folder: Path | None) -> bool:
    """Whether the checkpoint's training gave estimation the caption (routing.estimate_caption in its
    config.yaml; the paper's L_est has none, so False when unknown)."""
    path = folder / "config.yaml" if folder else None
    if path is None or not path.is_file():
        return False
    import yaml

    def find(node: Any) -> Any:
        if isinstance(node, dict):
            if "estimate_caption" in node:
                return node["estimate_caption"]
            return next((v for v in map(find, node.values()) if v is not None), None)
        return None

    try:
        return bool(find(yaml.safe_load(path.read_text())))
    except yaml.YAMLError:
        return False


@dataclass
class _Settings:
    steps: int
    estimate_steps: dict[str, int]  # per modality
    guidance: float | None
    seed: int
    batch_size: int
    keep_videos: int
    estimate_caption: bool
    ensemble: dict[str, int]  # per modality


@dataclass
class _Session:
    """What the task runners share: the pipeline, the clips, the settings and the collected results."""

    pipe: Any
    clips: list[EvalClip]
    settings: _Settings
    progress: Any
    prior: Prior | None = None                  # the estimation bar's prior (None: leave-one-out)
    per_clip: list[dict] = field(default_factory=list)
    scored: dict[tuple[str, str], "_Scored"] = field(default_factory=dict)
    videos: list[dict] = field(default_factory=list)
    _reference: dict[int, dict[str, Pooled]] = field(default_factory=dict)
    _prior_stats: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    _all_clips_prior: Prior | None = None

    # -- running the model --

    def batches(self, modality: str | None) -> Iterable[list[EvalClip]]:
        """Clips in batches of equal decode hints (the pipeline decodes a batch with one set)."""
        batch: list[EvalClip] = []
        for clip in self.clips:
            if batch and (len(batch) == self.settings.batch_size or _decode_hints(batch[0], modality)
                          != _decode_hints(clip, modality)):
                yield batch
                batch = []
            batch.append(clip)
        if batch:
            yield batch

    def run(self, task: str, batch: list[EvalClip], modality: str | None, **inputs):
        import torch

        prompts = [c.caption for c in batch]
        if task == "estimate" and not self.settings.estimate_caption:
            prompts = [""] * len(batch)
        out = self.pipe(prompt=prompts, task=task, modalities=[modality] if modality and task != "control" else (),
                        num_inference_steps=self.settings.estimate_steps[modality] if task == "estimate"
                        else self.settings.steps,
                        guidance_scale=None if task == "estimate" else self.settings.guidance,
                        ensemble_size=self.settings.ensemble[modality] if task == "estimate" else 1,
                        generator=[torch.Generator("cpu").manual_seed(_clip_seed(self.settings.seed, c.index))
                                   for c in batch],
                        decode_hints={modality: _decode_hints(batch[0], modality)} if modality else None, **inputs)
        self.progress.update()
        return out

    def estimate(self, batch: list[EvalClip], modality: str, rgb: np.ndarray) -> list[np.ndarray]:
        return self.run("estimate", batch, modality, video=rgb).raw[modality]

    # -- recording --

    def record(self, task: str, modality: str, clip: EvalClip, model: Mapping[str, Pooled],
               comparisons: Sequence[Comparison] = ()) -> None:
        """One clip's scores: the model's and, scored the same way, each comparison's (`scores` holds
        this clip's dict only); per_clip.json gets the values."""
        group = self.scored.setdefault((task, modality), _Scored())
        group.add(model, comparisons)
        bar = next((c for c in comparisons if c.bar), None)
        for metric, score in model.items():
            entry = {"task": task, "modality": modality, "clip_id": clip.clip_id, "metric": metric,
                     "model": _finite(score.value)}
            if bar is not None and metric in bar.scores[0]:
                entry["baseline"] = _finite(bar.scores[0][metric].value)
            entry |= {c.name: _finite(c.scores[0][metric].value) for c in comparisons
                      if not c.bar and metric in c.scores[0]}
            self.per_clip.append(entry)

    def keep(self, task: str, modality: str, clip: EvalClip, cells: list[tuple[str, np.ndarray]]) -> None:
        shown = sum(1 for v in self.videos if v["task"] == task and v["modality"] == modality)
        if shown < self.settings.keep_videos:
            self.videos.append({"task": task, "modality": modality, "clip_id": clip.clip_id,
                                "caption": clip.caption, "cells": [{"label": l, "frames": f} for l, f in cells]})

    def reference_quality(self, clip: EvalClip) -> Comparison:
        """The quality proxies of the real clip: shown beside the generated video's, never a bar."""
        if clip.index not in self._reference:
            self._reference[clip.index] = video_quality(clip.rgb)
        return Comparison(REAL_CLIPS, False, [self._reference[clip.index]], bar=False)

    def prior_for(self, clip: EvalClip) -> Prior:
        """The training split's prior, or the other evaluated clips' (leave-one-out) without one."""
        if self.prior is not None:
            return self.prior
        if self._all_clips_prior is None:
            self._prior_stats = {c.index: prior_stats(c.raw) for c in self.clips}
            self._all_clips_prior = Prior.fit(list(self._prior_stats.values()), "the evaluated clips")
        return self._all_clips_prior.without(self._prior_stats[clip.index])

    def unrelated(self, clip: EvalClip) -> EvalClip | None:
        """Another clip (the next one), whose signals serve as the unrelated control."""
        return self.clips[(clip.index + 1) % len(self.clips)] if len(self.clips) > 1 else None


@dataclass
class _Scored:
    """One (task, modality): the model's per-clip scores and each comparison's, aligned by clip."""

    model: list[Mapping[str, Pooled]] = field(default_factory=list)
    comparisons: dict[str, Comparison] = field(default_factory=dict)

    def add(self, model: Mapping[str, Pooled], comparisons: Sequence[Comparison]) -> None:
        for c in comparisons:
            group = self.comparisons.setdefault(c.name, Comparison(c.name, c.oracle, [{}] * len(self.model), c.bar))
            group.scores.append(c.scores[0])
        for name, group in self.comparisons.items():
            if name not in {c.name for c in comparisons}:
                group.scores.append({})
        self.model.append(model)

    def rows(self, task: str, modality: str) -> list[dict]:
        primary = PRIMARY_METRIC.get(modality, (None,))[0]
        return compare_rows(task, modality, self.model, list(self.comparisons.values()), primary)


def _decode_hints(clip: EvalClip, modality: str | None) -> dict[str, Any]:
    return {**clip.hints, "near": 1.0} if modality else {}  # relative depth: the metrics fit scale and shift


def _finite(value: Any) -> float | None:
    return None if value is None or not math.isfinite(float(value)) else float(value)


def video_quality(frames: np.ndarray) -> dict[str, Pooled]:
    """The weight-free quality proxies of one video (each the clip's number, averaged over clips);
    warping error along its own DIS flow."""
    values = {"frame_ssim": frame_ssim(frames), "motion_smoothness": motion_smoothness(frames),
              "warping_error": warping_error(frames, dis_flow(frames))}
    return {k: Pooled.mean(v) for k, v in values.items()}


def visualize(modality: str, raw: np.ndarray, clip: EvalClip) -> np.ndarray:
    """The picture people expect (colourised depth, flow wheel at the clip's flow range, ...)."""
    return get_modality(modality).visualize(raw, **clip.hints)


def encode_condition(modality: str, clip: EvalClip) -> np.ndarray:
    """The clip's ground-truth modality as the video the model is conditioned on."""
    return get_modality(modality).encode(clip.raw[modality], **clip.hints)


# ----- the four task families ------------------------------------------------------------------------


def encoding_ceiling(modality: str, clip: EvalClip) -> np.ndarray:
    """The ground truth through the modality's video encoding and back, decoded as estimates are:
    the best any estimate can score (an oracle reference)."""
    return get_modality(modality).decode(encode_condition(modality, clip), **_decode_hints(clip, modality))


def run_estimate(session: _Session, modality: str, reestimate: bool = False) -> None:
    for batch in session.batches(modality):
        predictions = session.estimate(batch, modality, np.stack([c.rgb for c in batch]))
        for clip, pred in zip(batch, predictions):
            gt, options = clip.raw[modality], clip.metric_options(modality)
            score = lambda raw: modality_scores(modality, raw, gt, **options)
            comparisons = [Comparison(b.name, b.oracle, [score(b.prediction)], b.bar)
                           for b in estimate_baselines(modality, session.prior_for(clip), gt)]
            comparisons.append(Comparison(CEILING, True, [score(encoding_ceiling(modality, clip))], bar=False))
            session.record("estimate", modality, clip, score(pred), comparisons)
            session.keep("estimate", modality, clip, [("GT RGB", clip.rgb),
                                                      (f"GT {modality}", visualize(modality, gt, clip)),
                                                      (f"estimated {modality}", visualize(modality, pred, clip))])


def _flow_teacher(rgb: np.ndarray, flow: np.ndarray, valid: np.ndarray | None) -> dict[str, Pooled]:
    scores = modality_scores("flow", dis_flow(rgb), flow, valid=valid)
    return {DIS_PREFIX + k: v for k, v in scores.items()}


def _agreement(modality: str, signal: np.ndarray, estimate: np.ndarray | None, rgb: np.ndarray,
               valid: np.ndarray | None) -> dict[str, Pooled]:
    """How well a generated video agrees with a signal: the model's re-estimate against it (when
    there is one) and, for flow, DIS flow of the video against it."""
    options = {"valid": valid} if modality == "flow" and valid is not None else {}
    scores = control_agreement(modality, signal, estimate, **options) if estimate is not None else {}
    if modality == "flow":
        scores |= _flow_teacher(rgb, signal, valid)
    return scores


def _score_generated(session: _Session, task: str, modality: str, clip: EvalClip, rgb: np.ndarray,
                     estimate: np.ndarray | None, signal: np.ndarray, unrelated: np.ndarray | None,
                     valid: np.ndarray | None = None, unrelated_valid: np.ndarray | None = None) -> None:
    """Control and joint: agreement with the clip's signal, the bar its agreement with an unrelated
    one; quality proxies beside the real clip's."""
    comparisons = [session.reference_quality(clip)]
    if unrelated is not None:
        comparisons.append(Comparison(UNRELATED, False, [_agreement(modality, unrelated, estimate, rgb,
                                                                   unrelated_valid)]))
    model = _agreement(modality, signal, estimate, rgb, valid) | video_quality(rgb)
    session.record(task, modality, clip, model, comparisons)


def run_control(session: _Session, modality: str, reestimate: bool) -> None:
    for batch in session.batches(modality):
        condition = np.stack([encode_condition(modality, c) for c in batch])
        generated = session.run("control", batch, modality, conditions={modality: condition}).frames["rgb"]
        estimates = session.estimate(batch, modality, generated) if reestimate else [None] * len(batch)
        for clip, rgb, estimate in zip(batch, generated, estimates):
            other = session.unrelated(clip)
            _score_generated(session, "control", modality, clip, rgb, estimate, clip.raw[modality],
                             other.raw[modality] if other is not None else None, clip.flow_valid,
                             other.flow_valid if other is not None else None)
            cells = [(f"control: {modality}", visualize(modality, clip.raw[modality], clip)), ("generated RGB", rgb)]
            if estimate is not None:
                cells.append((f"re-estimated {modality}", visualize(modality, estimate, clip)))
            session.keep("control", modality, clip, cells + [("GT RGB", clip.rgb)])


def run_joint(session: _Session, modality: str, reestimate: bool) -> None:
    generated: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for batch in session.batches(modality):
        out = session.run("joint", batch, modality)
        for clip, rgb, raw in zip(batch, out.frames["rgb"], out.raw[modality]):
            generated[clip.index] = (rgb, raw)
    for batch in session.batches(modality):  # score once every clip's joint sample exists
        rgbs = np.stack([generated[c.index][0] for c in batch])
        estimates = session.estimate(batch, modality, rgbs) if reestimate else [None] * len(batch)
        for clip, estimate in zip(batch, estimates):
            rgb, raw = generated[clip.index]
            other = session.unrelated(clip)
            _score_generated(session, "joint", modality, clip, rgb, estimate, raw,
                             generated[other.index][1] if other is not None else None)
            cells = [("generated RGB", rgb), (f"generated {modality}", visualize(modality, raw, clip))]
            if estimate is not None:
                cells.append((f"re-estimated {modality}", visualize(modality, estimate, clip)))
            session.keep("joint", modality, clip, cells)


def run_t2v(session: _Session, modality: None = None, reestimate: bool = False) -> None:
    for batch in session.batches(None):
        for clip, rgb in zip(batch, session.run("t2v", batch, None).frames["rgb"]):
            session.record("t2v", "rgb", clip, video_quality(rgb), [session.reference_quality(clip)])
            session.keep("t2v", "rgb", clip, [("generated RGB", rgb), ("GT RGB (same caption)", clip.rgb)])


# Each task's runner: (session, modality (None for t2v), whether control / joint re-estimate the signal).
TASK_RUNNERS = {"estimate": run_estimate, "control": run_control, "joint": run_joint, "t2v": run_t2v}


# ----- aggregation -----------------------------------------------------------------------------------


def aggregate(scored: Mapping[tuple[str, str], _Scored]) -> list[dict]:
    """The rows (`compare.compare_rows`) of every (task, modality), in the order they were run."""
    return [row for (task, modality), group in scored.items() for row in group.rows(task, modality)]


# ----- the entry point -------------------------------------------------------------------------------


def _check_request(tasks: Sequence[str], modalities: Sequence[str] | None, spec) -> tuple[list[str], list[str]]:
    """The tasks and modalities to run; explicit requests the checkpoint cannot serve are errors."""
    unknown = [t for t in tasks if t not in EVAL_TASKS]
    if unknown:
        raise ValueError(f"unknown tasks {unknown}; choose from {', '.join(EVAL_TASKS)}")
    learned_modalities = list(spec.modalities) if spec else list(MODALITY_NAMES)
    chosen = learned_modalities if modalities is None else [canonical_name(m) for m in modalities]
    if "rgb" in chosen:
        raise ValueError("'rgb' is not a modality to evaluate; name depth, flow, segmentation, skeleton or densepose")
    not_learned = [m for m in chosen if m not in learned_modalities]
    if not_learned:
        raise ValueError(f"modalities {not_learned}: the checkpoint has not learned them; "
                         f"it knows {learned_modalities}")
    learned_tasks = list(spec.tasks) if spec and spec.tasks else list(EVAL_TASKS)
    missing = [t for t in tasks if t not in learned_tasks]
    if missing:
        raise ValueError(f"tasks {missing}: the checkpoint was trained for {learned_tasks} only; "
                         f"pass --tasks {' '.join(t for t in tasks if t in learned_tasks)}")
    if not chosen and any(t != "t2v" for t in tasks):
        raise ValueError("no modality to evaluate: the checkpoint lists none; pass --modalities or --tasks t2v")
    return list(dict.fromkeys(tasks)), list(dict.fromkeys(chosen))


def _load_spec(checkpoint) -> tuple[Any, Path | None]:
    from unityvideo.models.checkpoint import load_checkpoint_spec

    if isinstance(checkpoint, (str, Path)):
        return load_checkpoint_spec(checkpoint), Path(checkpoint)
    return checkpoint.spec, None


def modality_counts(value: int | Mapping[str, int] | None, default: int, modalities: Sequence[str],
                    what: str = "estimate_steps") -> dict[str, int]:
    """A count per modality (estimation steps, ensemble sizes): one count for all (None: `default`), or
    a mapping modality -> count where unnamed modalities take `default`. `what` names the setting in
    errors. Few steps approach the posterior mean, which suits some modalities' metrics; many let an
    ensemble's samples differ (docs/demo.md)."""
    if value is None or isinstance(value, int):
        counts = dict.fromkeys(modalities, default if value is None else value)
    else:
        named = {canonical_name(m): n for m, n in value.items()}
        unknown = [m for m in named if m not in modalities]
        if unknown:
            raise ValueError(f"{what} names {unknown}, which this evaluation does not estimate; "
                             f"it estimates {list(modalities)}")
        counts = {m: named.get(m, default) for m in modalities}
    bad = {m: n for m, n in counts.items() if not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"{what} must be >= 1, got {bad}")
    return counts


def describe_counts(counts: Mapping[str, int] | int) -> str:
    """'16' when every modality shares a count, else 'depth 16, flow 2, ...'."""
    if isinstance(counts, int):
        return str(counts)
    values = set(counts.values())
    return str(values.pop()) if len(values) == 1 else ", ".join(f"{m} {n}" for m, n in counts.items())


def evaluate(checkpoint_or_pipeline, data_manifest: str | Path, out_dir: str | Path,
             tasks: Sequence[str] = EVAL_TASKS, modalities: Sequence[str] | None = None,
             clips: int | None = None, steps: int = 30, guidance: float | None = None, seed: int = 0,
             estimate_steps: int | Mapping[str, int] | None = None, ensemble: int | Mapping[str, int] = 1,
             split: str | None = None, batch_size: int = 4, keep_videos: int = 2, device: str | None = None,
             dtype: str = "float32", name: str = "results", prior_data: str | Path | None = None) -> list[dict]:
    """Run the benchmark and write its files (see the module doc); returns the metric rows.

    checkpoint_or_pipeline: a checkpoint folder or a UnityVideoPipeline. data_manifest: a dataset folder
    or manifest; its rows with raw ground truth are used (split: default 'test' when present).
    modalities: default those the checkpoint learned. clips: the first N usable clips (None: all).
    steps / guidance: sampling steps and text guidance of the generative tasks (None: the pipeline's
    defaults; estimation runs without guidance). estimate_steps: steps of estimation (and of the
    re-estimation that scores control and joint), one count or per modality (`modality_counts`);
    None: `steps`. One step is the model's x0 prediction from pure noise, the posterior mean given the
    RGB, which a metric against one ground truth favours.
    ensemble: estimates per clip combined by `Modality.combine`, for estimation and the
    re-estimates that score control and joint; one size or per modality (unnamed: 1). Clips
    are cut to the checkpoint's frames and size (centre crop, no resize). device: None = cuda when
    available. prior_data: the dataset whose training split fits the estimation bar (`baselines.Prior`,
    up to PRIOR_CLIPS clips; default the evaluation manifest's); without training rows the prior of
    each clip is fitted on the other evaluated clips.
    """
    start = time.perf_counter()
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if clips is not None and clips < 1:
        raise ValueError(f"clips must be >= 1, got {clips}")
    spec, folder = _load_spec(checkpoint_or_pipeline)
    tasks, modalities = _check_request(tasks, modalities, spec)
    estimate_steps = modality_counts(estimate_steps, steps, modalities)
    ensemble = modality_counts(ensemble, 1, modalities, "ensemble")
    manifest = resolve_manifest(data_manifest)
    records = select_records(manifest, split)
    frames = spec.frames if spec else None
    if frames is None:
        raise ValueError("the pipeline has no checkpoint spec: load it with UnityVideoPipeline.from_pretrained")
    eval_clips, skipped = load_eval_clips(records[:clips] if clips else records, frames,
                                          tuple(spec.size) if spec else None, modalities)
    if not eval_clips:
        raise ValueError(f"{manifest}: none of the {len(records)} clips can be evaluated "
                         f"({next(iter(skipped.values()))})")

    prior = fit_prior(resolve_manifest(prior_data) if prior_data else manifest, frames,
                      tuple(eval_clips[0].rgb.shape[1:3]), modalities) if "estimate" in tasks else None
    pipe = _pipeline(checkpoint_or_pipeline, device, dtype)
    settings = _Settings(steps, estimate_steps, guidance, seed, max(1, batch_size), keep_videos,
                         _estimate_uses_caption(folder), ensemble)
    reestimate = "estimate" in (spec.tasks or EVAL_TASKS)
    from tqdm.auto import tqdm

    units = _count_units(tasks, modalities, len(eval_clips), settings.batch_size, reestimate)
    with tqdm(total=units, desc="eval", unit="batch") as progress:
        session = _Session(pipe, eval_clips, settings, progress, prior)
        for task in tasks:
            for modality in ([None] if task == "t2v" else modalities):
                progress.set_description(f"eval {task}" + (f" {modality}" if modality else ""))
                TASK_RUNNERS[task](session, modality, reestimate)
    rows = aggregate(session.scored)
    info = {"checkpoint": str(folder) if folder else None, "step": getattr(spec, "step", None),
            "data": str(manifest), "clips": [c.clip_id for c in eval_clips], "skipped": skipped,
            "tasks": tasks, "modalities": modalities, "frames": frames, "size": list(eval_clips[0].rgb.shape[1:3]),
            "steps": steps, "estimate_steps": estimate_steps, "ensemble": ensemble, "guidance": guidance, "seed": seed, "estimate_caption": settings.estimate_caption,
            "estimate_mode": getattr(pipe, "estimate_mode", "generative"),
            "prior": prior.source if prior else "leave-one-out over the evaluated clips",
            "wall_s": round(time.perf_counter() - start, 2)}
    write_results(Path(out_dir), rows, session.per_clip, info, session.videos, name)
    return rows


def fit_prior(manifest: Path, frames: int, size: tuple[int, int], modalities: Sequence[str],
              clips: int = PRIOR_CLIPS) -> Prior | None:
    """The estimation bar's prior, fitted on the first `clips` training rows of `manifest` with raw
    ground truth, cut like the evaluated clips; None when it has no such rows."""
    records = [r for r in read_manifest(manifest) if r.raw is not None and r.split == "train"][:clips]
    train, _ = load_eval_clips(records, frames, size, modalities) if records else ([], {})
    if not train:
        return None
    return Prior.fit([prior_stats(c.raw) for c in train], f"training split of {manifest.parent.name}")


def _count_units(tasks, modalities, n_clips, batch_size, reestimate) -> int:
    """Pipeline calls, for the progress bar (an estimate when batches split on differing hints)."""
    batches = math.ceil(n_clips / batch_size)
    per_task = {"estimate": 1, "control": 1 + reestimate, "joint": 1 + reestimate, "t2v": 1}
    return sum(batches * per_task[t] * (1 if t == "t2v" else len(modalities)) for t in tasks)


def _pipeline(checkpoint_or_pipeline, device: str | None, dtype: str):
    import torch

    from unityvideo.pipeline import UnityVideoPipeline

    if isinstance(checkpoint_or_pipeline, UnityVideoPipeline):
        pipe = checkpoint_or_pipeline
    else:
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        pipe = UnityVideoPipeline.from_pretrained(checkpoint_or_pipeline, torch_dtype=getattr(torch, dtype),
                                                  device=device)
    pipe.set_progress_bar_config(disable=True)  # one bar for the whole benchmark
    return pipe
