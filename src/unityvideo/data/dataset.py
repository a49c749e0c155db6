"""A torch Dataset over a clip manifest: aligned RGB + modality streams, caption, raw ground truth.

Bad clips (a missing, corrupt or truncated file, streams whose frame counts or sizes disagree, a
clip too short for the requested frames, a requested modality the clip lacks, an unreadable raw
.npz) are never fatal and never silent: `__getitem__` logs the reason once per clip, counts it in
`dataset.skipped` (a Counter of reasons) and returns the next valid clip instead (so batches keep
their size; `sample["index"]` says which clip it is). Known-bad clips are remembered and skipped
without reopening their files. A summary line is logged when an epoch's worth of items has been
served (per DataLoader worker: each worker keeps its own counters) and by `report()`.
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from ..modalities import MODALITY_NAMES, canonical_name, default_max_flow, get_modality, picture_hints
from .manifest import ClipRecord, read_manifest
from .raw import RawReadError, load_raw
from .transforms import CropPlan, apply_crop, crop_raw, plan_crop, sample_frame_indices
from .video import VideoReadError, probe_video, read_video

__all__ = ["UnityVideoDataset", "SkippedClips", "collate_clips", "SKIP_REASONS"]

log = logging.getLogger(__name__)

SKIP_REASONS = ("missing_modality", "missing_file", "corrupt_video", "frame_mismatch", "size_mismatch",
                "too_short", "missing_raw", "corrupt_raw")


class SkippedClips:
    """The clips that could not be used, each logged once with the first reason found; shared by the
    datasets that read the same records (one per modality), so a bad clip is one warning, not six."""

    def __init__(self) -> None:
        self.reasons: dict[int, str] = {}  # index in the records -> reason

    def add(self, index: int, clip_id: str, source: str, reason: str, detail: str) -> None:
        if index in self.reasons:
            return
        self.reasons[index] = reason
        log.warning("skipping clip %r (item %d of %s): %s: %s", clip_id, index, source, reason, detail)

    def totals(self) -> Counter[str]:
        """Skipped clips by reason (each clip counted once)."""
        return Counter(self.reasons.values())


class _SkipClip(Exception):
    def __init__(self, reason: str, detail: str):
        assert reason in SKIP_REASONS, reason
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class UnityVideoDataset(Dataset):
    """Clips of a manifest as dicts of aligned streams.

    Each item: `index` (the clip actually returned), `clip_id`, `caption`, `rgb` float32 (3, F, H, W)
    in [-1, 1], `modalities` {name: (3, F, H, W) float32 in [-1, 1]} (the encoded modality videos),
    `frame_indices` (F,) int64, `hints` (`picture_hints`: size, near, max_flow): pass them to `Modality.decode` for the
    returned videos (max_flow is scaled with the resize, since resizing scales flow vectors), and with `with_raw`
    `raw`: the raw ground-truth dict for the same frames and crop, or None when the clip has no raw
    file or a resize was needed (resampling ground truth would invent it).

    frames/frame_stride: F indices `frame_stride` apart (note the flow stream stays one-step flow);
    random_offset: random start frame; random_crop: random crop window instead of the centre;
    size: (H, W) target or None to keep the clip's size; modalities: names/aliases, None = every
    modality column the manifest fills. Randomness depends on (seed, epoch, index) only: call
    `set_epoch` each epoch for new draws (works the same with DataLoader workers).
    """

    def __init__(self, manifest: str | Path | Sequence[ClipRecord], frames: int = 16,
                 size: tuple[int, int] | None = None, modalities: Sequence[str] | None = None,
                 frame_stride: int = 1, random_offset: bool = False, random_crop: bool = False,
                 with_raw: bool = False, seed: int = 0, split: str | None = None,
                 skipped_clips: SkippedClips | None = None):
        if isinstance(manifest, (str, Path)):
            self.source = str(manifest)
            records = read_manifest(manifest)
        else:
            self.source = "<records>"
            records = list(manifest)
        if split is not None:
            records = [r for r in records if r.split == split]
        if not records:
            raise ValueError(f"{self.source}: no clips{f' in split {split!r}' if split else ''}; check the manifest")
        self.records = records
        if modalities is None:
            present = {name for r in records for name in r.modalities}
            modalities = [n for n in MODALITY_NAMES if n in present]
            log.info("%s: using the manifest's modalities %s", self.source, modalities)
        self.modalities = tuple(dict.fromkeys(canonical_name(m) for m in modalities))
        if "rgb" in self.modalities:
            raise ValueError("rgb is always returned; list only the auxiliary modalities in `modalities`")
        self.frames, self.frame_stride = int(frames), int(frame_stride)
        self.size = None if size is None else (int(size[0]), int(size[1]))
        self.random_offset, self.random_crop = random_offset, random_crop
        self.with_raw, self.seed, self.epoch = with_raw, int(seed), 0
        self.skipped: Counter[str] = Counter()
        self._epoch_skipped: Counter[str] = Counter()
        self._bad: dict[int, _SkipClip] = {}
        self.skipped_clips = skipped_clips if skipped_clips is not None else SkippedClips()
        self._served = 0
        self._warned_raw_resize = False
        sample_frame_indices(10 ** 9, self.frames, self.frame_stride)  # validates frames/stride early

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose random offsets/crops are drawn (like DistributedSampler)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------ reporting
    def report(self) -> str:
        """One line: how many clips were served and skipped, by reason (cumulative)."""
        reasons = ", ".join(f"{k}={v}" for k, v in sorted(self.skipped.items())) or "none"
        return (f"{self.source}: {self._served} items served, {sum(self.skipped.values())} skips "
                f"({reasons}), {len(self._bad)} of {len(self)} clips known bad")

    def _count_served(self) -> None:
        self._served += 1
        worker = get_worker_info()
        share = max(1, len(self) // worker.num_workers) if worker is not None else len(self)
        if self._served % share == 0:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(self._epoch_skipped.items())) or "none"
            who = f" (worker {worker.id})" if worker is not None else ""
            log.info("epoch %d done%s: %d skips this epoch (%s); %s", self.epoch, who,
                     sum(self._epoch_skipped.values()), reasons, self.report())
            self._epoch_skipped.clear()

    def _skip(self, index: int, error: _SkipClip) -> None:
        self.skipped[error.reason] += 1
        self._epoch_skipped[error.reason] += 1
        if index not in self._bad:
            self._bad[index] = error
            self.skipped_clips.add(index, self.records[index].clip_id, self.source, error.reason, error.detail)

    # ------------------------------------------------------------------ loading
    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} clips")
        index %= len(self)
        for attempt in range(len(self)):
            candidate = (index + attempt) % len(self)
            try:
                if candidate in self._bad:
                    raise self._bad[candidate]
                sample = self._load(candidate)
            except _SkipClip as error:
                self._skip(candidate, error)
                continue
            self._count_served()
            return sample
        raise RuntimeError(f"{self.source}: every clip is unusable; {self.report()}. "
                           "Fix the files named in the warnings above")

    def _rng(self, index: int) -> np.random.Generator | None:
        if not (self.random_offset or self.random_crop):
            return None
        return np.random.default_rng([self.seed, self.epoch, index])

    def _stream_paths(self, record: ClipRecord) -> dict[str, Path]:
        paths = {"rgb": record.rgb}
        for name in self.modalities:
            if name not in record.modalities:
                raise _SkipClip("missing_modality", f"the manifest gives no {name} video for this clip")
            paths[name] = record.modalities[name]
        return paths

    def _probe(self, record: ClipRecord, paths: dict[str, Path]) -> tuple[int, int, int]:
        """Frame count and size shared by every stream (and the manifest's frames/height/width)."""
        shapes = {}
        for name, path in paths.items():
            if not path.is_file():
                raise _SkipClip("missing_file", f"{name} video {path} does not exist")
            try:
                shapes[name] = probe_video(path)[:3]
            except VideoReadError as error:
                raise _SkipClip("corrupt_video", str(error)) from None
        total, height, width = shapes["rgb"]
        for name, (count, h, w) in shapes.items():
            if count != total:
                raise _SkipClip("frame_mismatch", f"{name} video {paths[name]} has {count} frames, rgb has {total}")
            if (h, w) != (height, width):
                raise _SkipClip("size_mismatch", f"{name} video {paths[name]} is {h}x{w}, rgb is {height}x{width}")
        if record.frames is not None and record.frames != total:
            raise _SkipClip("frame_mismatch", f"the manifest says {record.frames} frames, the videos have {total}")
        if record.height not in (None, height) or record.width not in (None, width):
            raise _SkipClip("size_mismatch", f"the manifest says {record.height}x{record.width}, "
                                             f"the videos are {height}x{width}")
        return total, height, width

    def _read(self, name: str, path: Path, indices: np.ndarray, plan: CropPlan) -> torch.Tensor:
        try:
            frames = read_video(path, indices)
        except VideoReadError as error:
            raise _SkipClip("corrupt_video", str(error)) from None
        return apply_crop(frames, plan, categorical=get_modality(name).categorical)

    def _load_raw(self, record: ClipRecord, indices: np.ndarray, total: int, plan: CropPlan) -> dict | None:
        if record.raw is None:
            return None
        if plan.resizes:
            if not self._warned_raw_resize:
                log.warning("%s: raw ground truth is not returned for clips that need a resize "
                            "(%s -> %s); pass size=None or the clips' own size", self.source, plan.source, plan.target)
                self._warned_raw_resize = True
            return None
        if not record.raw.is_file():
            raise _SkipClip("missing_raw", f"raw ground truth {record.raw} does not exist")
        try:
            raw = load_raw(record.raw)
        except RawReadError as error:
            raise _SkipClip("corrupt_raw", str(error)) from None
        return crop_raw(raw, indices, total, plan)

    def _load(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        paths = self._stream_paths(record)
        total, height, width = self._probe(record, paths)
        rng = self._rng(index)
        try:
            indices = sample_frame_indices(total, self.frames, self.frame_stride,
                                           rng if self.random_offset else None)
        except ValueError as error:
            raise _SkipClip("too_short", str(error)) from None
        plan = plan_crop((height, width), self.size, rng if self.random_crop else None)
        streams = {name: self._read(name, path, indices, plan) for name, path in paths.items()}
        flow_max = record.flow_max if record.flow_max is not None else default_max_flow(height, width)
        sample: dict[str, Any] = {
            "index": index,
            "clip_id": record.clip_id,
            "caption": record.caption,
            "rgb": streams.pop("rgb"),
            "modalities": streams,
            "frame_indices": torch.from_numpy(indices),
            "hints": picture_hints(plan.target, record.depth_near, flow_max * plan.scale),
        }
        if self.with_raw:
            sample["raw"] = self._load_raw(record, indices, total, plan)
        return sample


def collate_clips(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples: tensors stacked, captions/ids as lists, `raw` kept as a list of dicts/None
    (raw arrays differ in shape between clips, e.g. the number of persons)."""
    raws = [sample.get("raw") for sample in batch]
    batched = default_collate([{k: v for k, v in sample.items() if k != "raw"} for sample in batch])
    if any("raw" in sample for sample in batch):
        batched["raw"] = raws
    return batched
