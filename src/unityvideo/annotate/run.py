"""Annotate plain RGB videos into a UnityVideo dataset, in the world's format.

Layout (the same as `unityvideo world` writes): DIR/clips/<clip_id>/{rgb.mp4, <modality>.mkv ...,
raw.npz, row.json} and DIR/manifest.csv. Each clip is written into a temporary folder and renamed
into place when complete, so a rerun skips finished clips and redoes the rest; a clip that fails is
logged, counted, listed in DIR/failures.jsonl and skipped.

Clips: with `frames=F` a video is cut into windows of F frames, one every `stride` frames (default
F: no overlap; the tail shorter than F is left out); with `frames=None` each video is one clip
(decoded whole into memory: use windows for long videos). `step` keeps every step-th frame
(the clip's fps is divided accordingly) and `size` resizes frames before the teachers see them.
Flow teachers also see the frame after the window when the video has one.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from tqdm import tqdm

from ..data.files import read_utf8
from ..data.manifest import ClipRecord, write_encodings, write_manifest
from ..data.raw import save_raw
from ..data.video import VideoReadError, probe_video, write_video
from ..modalities import MODALITY_NAMES, canonical_name, default_max_flow, depth_near, get_modality, picture_hints
from .teachers import BUILTIN_TEACHERS, Teacher, build_teacher

__all__ = ["AnnotateSpec", "AnnotateResult", "annotate_videos", "find_videos", "load_captions", "plan_windows",
           "build_teachers", "annotate_clip", "rebuild_manifest"]

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
MANIFEST_NAME, ROW_NAME, FAILURES_NAME = "manifest.csv", "row.json", "failures.jsonl"


@dataclass
class AnnotateSpec:
    """What to annotate and how. models: modality -> teacher spec (see teachers.build_teacher)."""

    inputs: Sequence[Path]
    out: Path
    modalities: Sequence[str] | None = None  # None: every modality that has a teacher
    models: dict[str, str] = field(default_factory=dict)
    captions: Path | None = None
    frames: int | None = None
    stride: int | None = None
    step: int = 1
    size: tuple[int, int] | None = None
    split: str = "train"
    flow_max: float | None = None
    device: str | None = None
    max_clips: int | None = None

    def validate(self) -> None:
        if self.frames is not None and self.frames < 2:
            raise ValueError(f"--frames must be at least 2 (flow needs a next frame), got {self.frames}")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"--stride must be at least 1, got {self.stride}")
        if self.step < 1:
            raise ValueError(f"--step must be at least 1, got {self.step}")
        if self.size is not None and min(self.size) < 16:
            raise ValueError(f"--size must be at least 16 16 pixels, got {self.size[0]} {self.size[1]}")
        if self.flow_max is not None and not self.flow_max > 0:
            raise ValueError(f"--flow-max must be > 0, got {self.flow_max}")

    def chosen_modalities(self) -> list[str]:
        """The asked modalities, or those with a built-in teacher or a model given."""
        if self.modalities:
            names = [canonical_name(m) for m in self.modalities]
        else:
            names = [m for m in MODALITY_NAMES if m in BUILTIN_TEACHERS or m in self.models]
        if "rgb" in names:
            raise ValueError("--modalities: rgb is always written; list only depth, flow, segmentation, skeleton, densepose")
        unused = set(self.models) - set(names)
        if unused:
            raise ValueError(f"a model was given for {sorted(unused)} but --modalities {names} leaves it out")
        return list(dict.fromkeys(names))


@dataclass
class AnnotateResult:
    manifest: Path
    annotated: int
    skipped: int  # already finished
    failed: int
    seconds: float
    teacher_seconds: dict[str, float] = field(default_factory=dict)  # total per modality
    frames: int = 0  # frames annotated in this run


# ----------------------------------------------------------------------------- inputs

def find_videos(inputs: Sequence[str | Path]) -> list[Path]:
    """Video files among `inputs`: files as given, folders searched recursively (sorted)."""
    found: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found += sorted(p for p in item.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file())
        elif item.is_file():
            found.append(item)
        else:
            raise FileNotFoundError(f"--input {item}: no such file or folder")
    if not found:
        raise FileNotFoundError(f"--input {' '.join(map(str, inputs))}: no videos found "
                                f"(looked for {', '.join(VIDEO_SUFFIXES)})")
    return list(dict.fromkeys(p.resolve() for p in found))


def load_captions(path: Path) -> dict[str, str]:
    """Captions from a CSV or JSONL file with columns video (or path/rgb) and caption (or prompt/text).
    Keys: the video path resolved against the file's folder, its file name and its stem."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--captions {path}: file not found")
    if path.suffix.lower() in (".jsonl", ".ndjson"):
        rows = [json.loads(line) for line in read_utf8(path).splitlines() if line.strip()]
    elif path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(io.StringIO(read_utf8(path), newline="")))
    else:
        raise ValueError(f"--captions {path}: use a .csv or .jsonl file with columns video,caption")
    captions: dict[str, str] = {}
    for number, row in enumerate(rows, start=1):
        row = {str(k).strip().lower(): v for k, v in row.items()}
        video = next((row[k] for k in ("video", "path", "rgb", "file") if row.get(k)), None)
        caption = next((row[k] for k in ("caption", "prompt", "text") if k in row), None)
        if video is None or caption is None:
            raise ValueError(f"--captions {path} row {number}: needs a 'video' and a 'caption' column/key, got {sorted(row)}")
        resolved = (path.parent / os.path.expanduser(str(video))).resolve()
        for key in (str(resolved), resolved.name, resolved.stem):
            captions.setdefault(key, str(caption))
    return captions


def caption_for(video: Path, captions: dict[str, str]) -> str | None:
    for key in (str(video.resolve()), video.name, video.stem):
        if key in captions:
            return captions[key]
    return None


def plan_windows(total: int, frames: int | None, stride: int | None) -> list[tuple[int, int]]:
    """(start, length) of each clip of a video with `total` frames (after subsampling)."""
    if frames is None:
        return [(0, total)] if total >= 2 else []
    return [(start, frames) for start in range(0, total - frames + 1, stride or frames)]


def _video_frames(path: Path, step: int, size: tuple[int, int] | None) -> Iterator[np.ndarray]:
    """Decode every step-th frame as uint8 RGB, resized to size (H, W) with area averaging."""
    import av
    import cv2

    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as error:
        raise VideoReadError(path, f"not a readable video ({error})") from error
    with container:
        for index, frame in enumerate(container.decode(video=0)):
            if index % step:
                continue
            image = frame.to_ndarray(format="rgb24")
            if size is not None and image.shape[:2] != tuple(size):
                image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)
            yield image


def iter_windows(frames: Iterator[np.ndarray], windows: list[tuple[int, int]], lookahead: int,
                 whole: bool = False) -> Iterator[tuple[int, np.ndarray]]:
    """Stream (window index, frames) with up to `lookahead` frames past the window, keeping only
    the frames still needed in memory. Windows the video turns out too short for are dropped
    (with `whole`, a window is the rest of the video, however long it turns out to be)."""
    buffer: deque[np.ndarray] = deque()
    first = 0  # video index of buffer[0]
    pending = list(enumerate(windows))
    for frame in frames:
        buffer.append(frame)
        while pending and pending[0][1][0] + pending[0][1][1] + lookahead <= first + len(buffer):
            index, (start, length) = pending.pop(0)
            yield index, np.stack(list(buffer)[start - first:start - first + length + lookahead])
            keep_from = pending[0][1][0] if pending else first + len(buffer)
            while buffer and first < keep_from:
                buffer.popleft()
                first += 1
        if not pending:
            return
    for index, (start, length) in pending:  # the end of the video: no lookahead frame
        clip = list(buffer)[start - first:] if whole else list(buffer)[start - first:start - first + length]
        if len(clip) >= 2 and (whole or len(clip) == length):
            yield index, np.stack(clip)


# ----------------------------------------------------------------------------- one clip

def build_teachers(spec: AnnotateSpec) -> dict[str, Teacher]:
    """One teacher per chosen modality; fails before any work with the message of the first problem."""
    return {name: build_teacher(name, spec.models.get(name), spec.device) for name in spec.chosen_modalities()}


def annotate_clip(frames: np.ndarray, length: int, teachers: dict[str, Teacher],
                  timings: dict[str, float] | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Run every teacher on a clip (frames may hold lookahead frames past `length`); returns the raw
    arrays (rgb, modalities, extras such as flow_valid) for the first `length` frames and metadata."""
    raws: dict[str, np.ndarray] = {"rgb": frames[:length]}
    meta: dict = {"teachers": {}}
    for name, teacher in teachers.items():
        start = time.perf_counter()
        annotation = teacher.annotate(np.ascontiguousarray(frames[:length + teacher.lookahead]))
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - start
        if len(annotation.raw) < length:
            raise RuntimeError(f"{teacher!r} returned {len(annotation.raw)} frames for a {length}-frame clip")
        raws[name] = annotation.raw[:length]
        for key, value in annotation.extras.items():
            raws[key] = value[:length]
        meta["teachers"][name] = teacher.name
        meta.update(annotation.meta)
    return raws, meta


def _write_clip(out: Path, cid: str, raws: dict[str, np.ndarray], meta: dict, row: dict, fps: float,
                flow_max: float | None) -> dict:
    final = out / "clips" / cid
    tmp = out / "clips" / f".{cid}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    height, width = raws["rgb"].shape[1:3]
    hints = {"depth_near": depth_near(raws["depth"]) if "depth" in raws else None,
             "flow_max": (flow_max or default_max_flow(height, width)) if "flow" in raws else None}
    paths = {"rgb": f"clips/{cid}/rgb.mp4"}
    write_video(tmp / "rgb.mp4", raws["rgb"], fps=fps, lossless=False)
    for name in MODALITY_NAMES:
        if name in raws:
            video = get_modality(name).encode(raws[name], **picture_hints((height, width), hints["depth_near"],
                                                                          hints["flow_max"]))
            write_video(tmp / f"{name}.mkv", video, fps=fps, lossless=True)
            paths[name] = f"clips/{cid}/{name}.mkv"
    if "flow" in raws:
        meta["flow_saturated"] = float((np.abs(raws["flow"]) > hints["flow_max"]).any(-1).mean())
    save_raw(tmp / "raw.npz", raws, meta={**meta, **{k: v for k, v in hints.items() if v is not None},
                                          "caption": row["caption"], "clip_id": cid})
    row = {**row, "paths": paths, "raw": f"clips/{cid}/raw.npz", "frames": len(raws["rgb"]), "height": height,
           "width": width, "fps": fps, **hints, "teachers": meta["teachers"]}
    (tmp / ROW_NAME).write_text(json.dumps(row, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return row


# ----------------------------------------------------------------------------- the dataset

def _record(row: dict) -> ClipRecord:
    return ClipRecord(rgb=row["paths"]["rgb"], caption=row["caption"],
                      modalities={n: p for n, p in row["paths"].items() if n != "rgb"}, raw=row["raw"],
                      split=row["split"], clip_id=row["clip_id"], frames=row["frames"], height=row["height"],
                      width=row["width"], fps=row["fps"], depth_near=row.get("depth_near"), flow_max=row.get("flow_max"))


def rebuild_manifest(out: Path) -> Path:
    """DIR/manifest.csv from the row.json of every finished clip (sorted by clip id)."""
    rows = [json.loads(p.read_text()) for p in sorted((Path(out) / "clips").glob(f"*/{ROW_NAME}"))]
    manifest = write_manifest(Path(out) / MANIFEST_NAME, [_record(r) for r in rows])
    write_encodings(manifest)
    return manifest


def _clip_prefixes(videos: list[Path]) -> dict[Path, str]:
    """A readable, unique clip-id prefix per video: its stem, plus a path hash when stems collide."""
    stems: dict[str, int] = {}
    for video in videos:
        stems[video.stem] = stems.get(video.stem, 0) + 1
    safe = lambda s: "".join(c if c.isalnum() or c in "-_" else "_" for c in s)  # noqa: E731
    return {v: safe(v.stem) + (f"-{hashlib.sha1(str(v).encode()).hexdigest()[:6]}" if stems[v.stem] > 1 else "")
            for v in videos}


def _finished(out: Path, cid: str, modalities: list[str]) -> bool:
    row_path = out / "clips" / cid / ROW_NAME
    if not row_path.is_file():
        return False
    try:
        return set(modalities) <= set(json.loads(row_path.read_text())["paths"])
    except (ValueError, KeyError):
        return False


@dataclass
class _Tally:
    """What an annotation run has done so far, and where its time went (teacher -> seconds)."""

    annotated: int = 0
    skipped: int = 0
    failed: int = 0
    frames: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def counted(self) -> int:
        return self.annotated + self.skipped + self.failed


@dataclass
class _VideoPlan:
    video: Path
    fps: float                       # after --step
    windows: list[tuple[int, int]]   # (start, length) in stepped frames


def annotate_videos(spec: AnnotateSpec) -> AnnotateResult:
    """Annotate every window of every input video with the chosen teachers (see the module notes)."""
    spec.validate()
    started = time.perf_counter()
    teachers = build_teachers(spec)  # first: a missing model is the most useful error to see
    videos = find_videos(spec.inputs)
    captions = load_captions(spec.captions) if spec.captions else {}
    out = Path(spec.out)
    (out / "clips").mkdir(parents=True, exist_ok=True)
    tally = _Tally()
    plans = _plan_videos(videos, spec, out, tally)
    prefixes = _clip_prefixes([p.video for p in plans])
    todo_total = sum(len(p.windows) for p in plans)
    if spec.max_clips is not None:
        todo_total = min(todo_total, spec.max_clips)
    uncaptioned = []
    with tqdm(total=todo_total, desc="annotate", unit="clip") as bar:
        for plan in plans:
            budget = None if spec.max_clips is None else spec.max_clips - tally.counted
            if budget is not None and budget <= 0:
                break
            caption = caption_for(plan.video, captions)
            if caption is None:
                uncaptioned.append(plan.video.name)
            windows = plan.windows if budget is None else plan.windows[:budget]
            _annotate_windows(plan, windows, prefixes[plan.video], caption or "", spec, teachers, out, tally, bar)
    if uncaptioned:
        log.warning("%d video(s) have no caption%s and get an empty one: %s", len(uncaptioned),
                    f" in {spec.captions}" if spec.captions else " (pass --captions FILE)",
                    ", ".join(uncaptioned[:5]) + (" ..." if len(uncaptioned) > 5 else ""))
    manifest = rebuild_manifest(out)
    return AnnotateResult(manifest, tally.annotated, tally.skipped, tally.failed, time.perf_counter() - started,
                          tally.timings, tally.frames)


def _plan_videos(videos: Sequence[Path], spec: AnnotateSpec, out: Path, tally: _Tally) -> list[_VideoPlan]:
    """The clip windows of every readable video; an unreadable one is logged and counted as failed."""
    plans = []
    for video in videos:
        try:
            total, _, _, fps = probe_video(video)
        except VideoReadError as error:
            _log_failure(out, video.name, video, error)
            tally.failed += 1
            continue
        windows = plan_windows(-(-total // spec.step), spec.frames, spec.stride)
        if not windows:
            log.warning("%s: %d frames (after --step %d) is shorter than one clip of %s frames; skipped",
                        video, -(-total // spec.step), spec.step, spec.frames)
        plans.append(_VideoPlan(video, (fps or 8.0) / spec.step, windows))
    return plans


def _annotate_windows(plan: _VideoPlan, windows: list[tuple[int, int]], prefix: str, caption: str,
                      spec: AnnotateSpec, teachers: dict[str, Teacher], out: Path, tally: _Tally, bar: tqdm) -> None:
    """Annotate and write the unfinished `windows` of one video, decoding it once; a clip that fails is
    logged, counted and skipped, never fatal."""
    modalities = list(teachers)
    ids = [f"{prefix}-{start:06d}" for start, _ in windows]
    wanted = [(i, w) for i, w in enumerate(windows) if not _finished(out, ids[i], modalities)]
    tally.skipped += len(windows) - len(wanted)
    bar.update(len(windows) - len(wanted))
    if not wanted:
        return
    lookahead = max((t.lookahead for t in teachers.values()), default=0)
    stream = iter_windows(_video_frames(plan.video, spec.step, spec.size), [w for _, w in wanted], lookahead,
                          whole=spec.frames is None)
    done = set()
    try:
        for k, frames in stream:
            index, (start, length) = wanted[k]
            try:
                raws, meta = annotate_clip(frames, min(length, len(frames)), teachers, tally.timings)
                origin = {"source": str(plan.video), "start_frame": start * spec.step, "step": spec.step}
                meta.update(origin, captioned=bool(caption))
                row = {"clip_id": ids[index], "split": spec.split, "index": index, "caption": caption, **origin}
                _write_clip(out, ids[index], raws, meta, row, plan.fps, spec.flow_max)
                tally.annotated += 1
                tally.frames += len(raws["rgb"])
            except Exception as error:  # a bad clip is logged, counted and skipped, never fatal
                _log_failure(out, ids[index], plan.video, error)
                tally.failed += 1
            done.add(k)
            bar.update()
    except VideoReadError as error:
        _log_failure(out, prefix, plan.video, error)
    missing = len(wanted) - len(done)
    if missing:  # decoding stopped early or the video held fewer frames than probed
        tally.failed += missing
        bar.update(missing)
        log.warning("%s: %d clip(s) could not be read (the video ended early or failed to decode)", plan.video, missing)


def _log_failure(out: Path, cid: str, video: Path, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}"
    log.warning("annotate: clip %s of %s failed and is skipped: %s", cid, video, message)
    with (out / FAILURES_NAME).open("a", encoding="utf-8") as handle:
        handle.write(json.dumps({"clip_id": cid, "video": str(video), "error": message, "time": time.time()}) + "\n")
