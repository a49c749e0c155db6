"""Clip manifests: one row per clip, CSV or JSONL, compatible with the authors' metadata.csv.

Columns (case-insensitive; paths relative to the manifest's folder, absolute paths also work):
    video | rgb                     RGB video (required, non-empty)
    prompt | caption                caption (required column; an empty cell is an empty caption)
    depth, raft | flow | optical_flow, segmentation | seg | mask, skeleton | pose | keypoints,
    densepose | iuv                 modality videos (optional columns; empty cell = clip lacks it)
    clip_id                         (optional) defaults to the video path without its suffix
    raw                             raw ground truth .npz (optional)
    split, seed, frames, height, width, fps, depth_near, flow_max   (optional)
Other columns are kept in `ClipRecord.extra` and logged once per file.
`write_manifest` writes the authors' column names (video, prompt, raft, ...) by default.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from ..modalities import ENCODING_VERSIONS, MODALITY_NAMES, check_encodings, get_modality
from .files import read_utf8

__all__ = ["ClipRecord", "ManifestError", "read_manifest", "write_manifest", "AUTHORS_COLUMNS"]

log = logging.getLogger(__name__)

# Canonical stream name -> the authors' metadata.csv column.
AUTHORS_COLUMNS = {"rgb": "video", "caption": "prompt", "depth": "depth", "densepose": "densepose",
                   "flow": "raft", "segmentation": "segmentation", "skeleton": "skeleton"}
_CAPTION_ALIASES = ("caption", "prompt", "text")
_PATH_FIELDS = ("raw",)
_NUMERIC_FIELDS: dict[str, tuple[type, str]] = {
    "frames": (int, "a positive integer"), "height": (int, "a positive integer"),
    "width": (int, "a positive integer"), "fps": (float, "a positive number"),
    "depth_near": (float, "a positive number"), "flow_max": (float, "a positive number")}
_TEXT_FIELDS = ("clip_id", "split", "seed")


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file, row, column and the fix."""


@dataclass
class ClipRecord:
    """One clip of a manifest. `read_manifest` gives absolute paths; when writing, relative paths
    are taken as relative to the manifest's folder and absolute ones are made relative to it."""

    clip_id: str
    rgb: Path
    caption: str = ""
    modalities: dict[str, Path] = field(default_factory=dict)  # canonical name -> video path
    raw: Path | None = None
    split: str | None = None
    seed: int | str | None = None  # an int, or a seed string such as "0/train/3"
    frames: int | None = None
    height: int | None = None
    width: int | None = None
    fps: float | None = None
    depth_near: float | None = None
    flow_max: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rgb = Path(self.rgb)
        self.modalities = {name: Path(p) for name, p in self.modalities.items()}
        self.raw = None if self.raw is None else Path(self.raw)

    def hints(self) -> dict[str, float]:
        """The decode hints this row stores (`near`, `max_flow`), for `Modality.decode(**hints)`."""
        hints = {"near": self.depth_near, "max_flow": self.flow_max}
        return {key: value for key, value in hints.items() if value is not None}


def _column_role(column: str) -> str | None:
    """Canonical role of a column: a stream name, 'caption', a known field, or None (unknown)."""
    key = column.strip().lower()
    if key in _CAPTION_ALIASES:
        return "caption"
    if key in _PATH_FIELDS or key in _NUMERIC_FIELDS or key in _TEXT_FIELDS:
        return key
    try:
        return get_modality(key).name
    except ValueError:
        return None


def _map_columns(columns: Iterable[str], path: Path) -> tuple[dict[str, str], list[str]]:
    """Column -> role, and the unknown columns; errors on a role given twice or a missing
    required column."""
    columns = list(columns)
    roles: dict[str, str] = {}
    seen: dict[str, str] = {}
    unknown = []
    for column in columns:
        role = _column_role(column)
        if role is None:
            unknown.append(column)
            continue
        if role in seen:
            raise ManifestError(f"{path}: columns {seen[role]!r} and {column!r} both mean {role!r}; keep one of them")
        seen[role] = column
        roles[column] = role
    for required, spellings in (("rgb", "'video' or 'rgb'"), ("caption", "'prompt' or 'caption'")):
        if required not in seen:
            raise ManifestError(f"{path}: missing required column {spellings}; "
                                f"the header has {columns}. Add the column (authors' names: "
                                "video,prompt,depth,densepose,raft,segmentation,skeleton)")
    return roles, unknown


def _parse_number(value: Any, kind: type, what: str, where: Callable[[], str]) -> int | float:
    try:
        number = kind(float(value)) if kind is int and float(value).is_integer() else kind(value)
    except (TypeError, ValueError):
        raise ManifestError(f"{where()}: expected {what}, got {value!r}; fix the value or leave the cell empty") from None
    if what.startswith("a positive") and not number > 0:
        raise ManifestError(f"{where()}: expected {what}, got {value!r}; fix the value or leave the cell empty")
    return number


def _resolve(value: str, root: Path) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else root / path


def _record_from_row(row: dict[str, Any], roles: dict[str, str], path: Path, row_label: str) -> ClipRecord:
    root = path.parent
    fields: dict[str, Any] = {"modalities": {}, "extra": {}}
    for column, value in row.items():
        if column is None:  # csv puts surplus cells under None
            raise ManifestError(f"{path} {row_label}: more cells than header columns; quote cells that contain commas")
        role = roles.get(column)
        text = "" if value is None else str(value).strip()
        empty = text == ""

        def where(column: str = column) -> str:
            return f"{path} {row_label}, column {column!r}"

        if role is None:
            fields["extra"][column] = value
        elif role == "caption":
            fields["caption"] = "" if value is None else str(value)
        elif role == "rgb":
            if empty:
                raise ManifestError(f"{where()}: empty RGB video path; every row needs its video file")
            fields["rgb"] = _resolve(text, root)
        elif role in MODALITY_NAMES:
            if not empty:
                fields["modalities"][role] = _resolve(text, root)
        elif role == "raw":
            fields["raw"] = None if empty else _resolve(text, root)
        elif role in _NUMERIC_FIELDS:
            kind, what = _NUMERIC_FIELDS[role]
            fields[role] = None if empty else _parse_number(text, kind, what, where)
        elif role == "seed":
            fields[role] = None if empty else int(text) if text.lstrip("-").isdigit() else text
        else:  # clip_id, split
            fields[role] = None if empty else text
    if "rgb" not in fields:
        raise ManifestError(f"{path} {row_label}: no RGB video path; fill the 'video' column")
    if not fields.get("clip_id"):
        rgb: Path = fields["rgb"]
        try:
            fields["clip_id"] = rgb.relative_to(root).with_suffix("").as_posix()
        except ValueError:
            fields["clip_id"] = rgb.with_suffix("").as_posix()
    return ClipRecord(**fields)


def _warn_unknown(path: Path, unknown: Iterable[str]) -> None:
    log.warning("%s: ignoring unknown columns %s (kept in ClipRecord.extra)", path, sorted(unknown))


def _read_csv(path: Path) -> list[ClipRecord]:
    with io.StringIO(read_utf8(path), newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames:
            raise ManifestError(f"{path}: empty file; a manifest needs a header row such as "
                                "video,prompt,depth,densepose,raft,segmentation,skeleton")
        roles, unknown = _map_columns(reader.fieldnames, path)
        if unknown:
            _warn_unknown(path, unknown)
        return [_record_from_row(row, roles, path, f"line {reader.line_num}") for row in reader]


def _read_jsonl(path: Path) -> list[ClipRecord]:
    records: list[ClipRecord] = []
    warned: set[str] = set()
    with io.StringIO(read_utf8(path)) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ManifestError(f"{path} line {number}: not valid JSON ({error.msg}); "
                                    "write one JSON object per line") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            try:
                roles, unknown = _map_columns(row, path)
            except ManifestError as error:
                raise ManifestError(str(error).replace(f"{path}:", f"{path} line {number}:", 1)) from None
            if set(unknown) - warned:  # once per file and key
                _warn_unknown(path, set(unknown) - warned)
                warned |= set(unknown)
            records.append(_record_from_row(row, roles, path, f"line {number}"))
    return records


def read_manifest(path: str | Path) -> list[ClipRecord]:
    """Read a .csv or .jsonl manifest into ClipRecords (paths resolved against its folder). A manifest
    whose producer recorded its picture formats (`write_encodings`) must match this version's."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; pass the path of a .csv or .jsonl manifest")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _read_csv(path)
    elif suffix in (".jsonl", ".ndjson"):
        records = _read_jsonl(path)
    else:
        raise ManifestError(f"{path}: unknown manifest format {suffix!r}; use .csv or .jsonl")
    _check_encodings(path, records)
    return records


def encodings_path(manifest: str | Path) -> Path:
    """The sidecar of a manifest naming the picture format of each modality video (DIR/NAME.encodings.json)."""
    manifest = Path(manifest)
    return manifest.with_name(f"{manifest.stem}.encodings.json")


def write_encodings(manifest: str | Path) -> Path:
    """Record that this manifest's modality videos were encoded by this version (world, annotate)."""
    path = encodings_path(manifest)
    path.write_text(json.dumps(ENCODING_VERSIONS, indent=1) + "\n")
    return path


def recorded_encodings(manifest: str | Path) -> dict[str, int] | None:
    """The picture formats `write_encodings` recorded for a manifest; None when it has no sidecar."""
    sidecar = encodings_path(manifest)
    return json.loads(read_utf8(sidecar)) if sidecar.is_file() else None


def _check_encodings(manifest: Path, records: list[ClipRecord]) -> None:
    recorded = recorded_encodings(manifest)
    if recorded is None:
        return  # made by hand or by another tool: the videos are taken to be in this version's formats
    present = sorted({m for r in records for m in r.modalities})
    try:
        check_encodings(recorded, present, f"{manifest}",
                        f"render or annotate it again with this version (e.g. `unityvideo world --out "
                        f"{manifest.parent}` into a new folder)")
    except ValueError as err:
        raise ManifestError(str(err)) from err


def _relative(target: Path, root: Path) -> str:
    if not target.is_absolute():  # already relative to the manifest's folder
        return target.as_posix()
    try:
        return Path(os.path.relpath(target, root)).as_posix()
    except ValueError:  # another drive on Windows
        return target.as_posix()


def _row_of(record: ClipRecord, root: Path, authors_names: bool) -> dict[str, Any]:
    name = (lambda n: AUTHORS_COLUMNS.get(n, n)) if authors_names else (lambda n: n)
    row: dict[str, Any] = {name("rgb"): _relative(record.rgb, root), name("caption"): record.caption}
    for modality in ("depth", "densepose", "flow", "segmentation", "skeleton"):
        path = record.modalities.get(modality)
        row[name(modality)] = "" if path is None else _relative(path, root)
    row["clip_id"] = record.clip_id
    row["raw"] = "" if record.raw is None else _relative(record.raw, root)
    for key in ("split", "seed", "frames", "height", "width", "fps", "depth_near", "flow_max"):
        value = getattr(record, key)
        row[key] = "" if value is None else value
    row.update(record.extra)
    return row


def write_manifest(path: str | Path, records: Iterable[ClipRecord], authors_names: bool = True) -> Path:
    """Write records as .csv or .jsonl (chosen by suffix), paths relative to the manifest's folder.
    Optional columns that are empty for every record are left out."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson"):
        raise ManifestError(f"{path}: unknown manifest format {suffix!r}; use .csv or .jsonl")
    path.parent.mkdir(parents=True, exist_ok=True)
    root = path.parent.resolve()
    rows = [_row_of(r, root, authors_names) for r in records]
    streams = 7  # video, prompt and the five modality columns are always written
    columns: list[str] = []
    for row in rows:
        for position, column in enumerate(row):
            if column not in columns and (position < streams or row[column] not in ("", None)):
                columns.append(column)
    if not rows:
        columns = list(_row_of(ClipRecord("", Path("x")), root, authors_names))[:streams]
    if suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    else:
        with path.open("w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps({c: row[c] for c in columns if c in row and row[c] != ""}) + "\n")
    return path
