"""Model against baseline: pooled numbers, a bootstrap interval over clips and a verdict.

    row = compare_rows("estimate", "depth", model_scores, [Comparison("train mean disparity", False, scores)])

A verdict claims only what the clips support. The model is `better` when the improvement over the
baseline is at least `MIN_EFFECT` (the floor below which a difference is not a result) and the 95 %
bootstrap interval of the improvement, resampling clips, lies above zero; `worse` when the interval
lies below zero; `tie` otherwise. References that are not bars to beat (an oracle, the encoding's
ceiling, the quality of the real clips) are reported beside the number and never get a verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from unityvideo.eval.metrics import HIGHER_IS_BETTER, Pooled, pool

__all__ = ["Comparison", "compare_rows", "bootstrap_improvement", "verdict", "min_effect", "is_better",
           "higher_is_better", "FRACTION_EFFECT", "RELATIVE_EFFECT", "BOOTSTRAP_RESAMPLES"]

FRACTION_EFFECT = 0.02   # IoU, PCK, delta1, Fl-all, SSIM: at least 2 points
RELATIVE_EFFECT = 0.05   # errors (AbsRel, EPE, UV, warping): at least 5 % of the baseline's
ERROR_METRICS = ("abs_rel", "epe", "epe_moving", "uv_error", "warping_error")
BOOTSTRAP_RESAMPLES = 2000
DIS_PREFIX = "dis_"  # control/joint flow scored with the independent DIS teacher instead of the model


@dataclass
class Comparison:
    """A named prediction scored like the model, clip by clip (aligned with the model's clips).
    `bar`: the baseline the model has to beat (one per row); otherwise a reference shown beside it
    (an oracle, the encoding ceiling, the real clips' quality)."""

    name: str
    oracle: bool
    scores: list[Mapping[str, Pooled]]
    bar: bool = True


def higher_is_better(metric: str) -> bool:
    return HIGHER_IS_BETTER[metric.removeprefix(DIS_PREFIX)]


def min_effect(metric: str, baseline: float) -> float:
    """The smallest improvement that counts: 5 % of the baseline for errors, 0.02 for fractions."""
    if metric.removeprefix(DIS_PREFIX) in ERROR_METRICS:
        return RELATIVE_EFFECT * abs(baseline)
    return FRACTION_EFFECT


def _stack(scores: Sequence[Mapping[str, Pooled]], metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(clips, classes) numerators and denominators; a clip without the metric adds zeros."""
    width = max(len(s[metric].num) for s in scores if metric in s)
    num = np.zeros((len(scores), width))
    den = np.zeros((len(scores), width))
    for i, clip in enumerate(scores):
        if metric in clip:
            num[i], den[i] = clip[metric].num, clip[metric].den
    return num, den


def _pooled_values(num: np.ndarray, den: np.ndarray, picks: np.ndarray) -> np.ndarray:
    """The pooled value of each resample (rows of `picks`: clip indices)."""
    n, d = num[picks].sum(axis=1), den[picks].sum(axis=1)  # (resamples, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(d > 0, n / np.where(d > 0, d, 1), np.nan)
    present = (d > 0).sum(axis=1)
    return np.where(present > 0, np.nansum(ratio, axis=1) / np.maximum(present, 1), np.nan)


def bootstrap_improvement(model: Sequence[Mapping[str, Pooled]], baseline: Sequence[Mapping[str, Pooled]],
                          metric: str, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float] | None:
    """The 95 % interval of (model - baseline) in the better direction (positive = the model is
    better), resampling clips with replacement and pooling each resample. None when fewer than two
    clips or nothing is measurable."""
    if len(model) != len(baseline):
        raise ValueError(f"{metric}: {len(model)} model clips but {len(baseline)} baseline clips")
    if len(model) < 2:
        return None
    picks = np.random.default_rng(seed).integers(0, len(model), (resamples, len(model)))
    sign = 1.0 if higher_is_better(metric) else -1.0
    gain = sign * (_pooled_values(*_stack(model, metric), picks) - _pooled_values(*_stack(baseline, metric), picks))
    gain = gain[np.isfinite(gain)]
    if gain.size < resamples // 2:
        return None
    low, high = np.quantile(gain, [0.025, 0.975])
    return float(low), float(high)


def verdict(metric: str, model: float | None, baseline: float | None,
            interval: Sequence[float] | None) -> str | None:
    """'better', 'worse' or 'tie' (see the module doc); None when a number is missing."""
    if model is None or baseline is None:
        return None
    gain = (model - baseline) * (1 if higher_is_better(metric) else -1)
    low, high = interval if interval is not None else (gain, gain)
    if gain >= min_effect(metric, baseline) and low > 0:
        return "better"
    if high < 0 and -gain >= min_effect(metric, baseline):
        return "worse"
    return "tie"


def is_better(row: Mapping) -> bool | None:
    """True for a `better` verdict, False for `worse`, None for a tie or no verdict."""
    return {"better": True, "worse": False}.get(row.get("verdict"))


def _pooled(scores: Sequence[Mapping[str, Pooled]]) -> dict[str, float | None]:
    """Every metric of `scores` pooled over the clips; None where nothing was measurable."""
    return {k: float(v) if np.isfinite(v) else None for k, v in pool(scores).items()}


def compare_rows(task: str, modality: str, model: Sequence[Mapping[str, Pooled]],
                 comparisons: Sequence[Comparison], primary: str | None = None) -> list[dict]:
    """One row per metric of the model: its pooled value, the bar's (with its name, whether it is an
    oracle, the bootstrap interval of the improvement and the verdict) and the references'."""
    bars = [c for c in comparisons if c.bar]
    if len(bars) > 1:
        raise ValueError(f"{task} {modality}: one baseline to beat per row, got {[c.name for c in bars]}")
    bar = bars[0] if bars else None
    values, bar_values = _pooled(model), _pooled(bar.scores) if bar else {}
    references = [(c, _pooled(c.scores)) for c in comparisons if not c.bar]
    rows = []
    for metric, value in values.items():
        base = bar_values.get(metric)
        interval = bootstrap_improvement(model, bar.scores, metric) if bar and base is not None else None
        rows.append({
            "task": task, "modality": modality, "metric": metric, "model": value, "baseline": base,
            "higher_is_better": higher_is_better(metric), "primary": metric == primary,
            "baseline_name": bar.name if base is not None else None,
            "baseline_oracle": bar.oracle if base is not None else None,
            "interval": list(interval) if interval else None,
            "verdict": verdict(metric, value, base, interval),
            "references": [{"name": c.name, "oracle": c.oracle, "value": pooled[metric]}
                           for c, pooled in references if metric in pooled],
        })
    return rows
