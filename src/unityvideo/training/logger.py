"""Metrics of a run: RUN/metrics.jsonl (one JSON object per line) and TensorBoard when installed."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

log = logging.getLogger("unityvideo.train")

METRICS = "metrics.jsonl"


class MetricLogger:
    """Writes rows {"step", "kind" ("train" | "val"), "time", metrics...}. On resume, rows after the
    resumed step (logged by the interrupted run after its last checkpoint) are dropped, so the file
    holds exactly one history."""

    def __init__(self, run_dir: Path, enabled: bool = True, resume_step: int = 0, tensorboard: bool = True):
        self.enabled = enabled
        self.path = Path(run_dir) / METRICS
        self.writer = None
        if not enabled:
            return
        self._truncate_after(resume_step)
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=resume_step or None)
            except ImportError:
                log.info("tensorboard is not installed: logging to %s only (pip install tensorboard)", self.path)

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        rows = [line for line in self.path.read_text().splitlines() if line.strip()]
        kept = [line for line in rows if json.loads(line)["step"] <= step]
        if step == 0:
            kept = []  # a fresh run (not a resume) starts a fresh history
        self.path.write_text("".join(line + "\n" for line in kept))

    def log(self, step: int, kind: str, metrics: dict) -> None:
        if not self.enabled:
            return
        row = {"step": step, "kind": kind, "time": round(time.time(), 3),
               **{k: _clean(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.writer is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(key if "/" in key else f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            if self.writer is not None:
                self.writer.close()


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no nan/inf
    return value


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
