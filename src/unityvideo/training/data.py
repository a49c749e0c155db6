"""Training data: the world or manifest behind each stage, a deterministic sample order, text features.

Sample numbering is global and fixed: step s consumes samples s*G .. (s+1)*G - 1 (G = global batch);
process r of W takes the contiguous block r*G/W .. (r+1)*G/W - 1 of those, cut into micro-batches.
Sample j reads clip perm_e[j mod N] (perm_e: a seeded permutation of the N clips for epoch e = j // N)
and draws its route from `sample_generator(seed, j)`. The data position of a run is therefore just its
step, and any number of processes or any resume point sees exactly the same samples.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from ..flow import Route, RoutingConfig, draw_route, sample_generator
from ..modalities import ENCODING_VERSIONS
from .config import Config, DataConfig, WorldData

log = logging.getLogger(__name__)

VAL_SPLITS = ("test", "val", "validation")


# ----- where the clips are ------------------------------------------------------------------------


def world_folder(world: WorldData, run_dir: Path) -> Path:
    """Cache folder of a rendered world, keyed by everything that changes a clip's pixels (the picture
    formats that are past their first version included)."""
    root = Path(world.cache) if world.cache else run_dir / "world"
    formats = "".join(f"-{name}{v}" for name, v in ENCODING_VERSIONS.items() if v > 1)
    return root / f"f{world.frames}-{world.size[0]}x{world.size[1]}-fps{world.fps}-seed{world.seed}{formats}"


def prepare_world(world: WorldData, run_dir: Path, workers: int | None = None) -> Path:
    """Render the world's train and test clips if missing (a rerun renders only what is missing);
    returns the manifest. Call it on one process only."""
    from ..world.export import ExportSpec, export_world

    out = world_folder(world, run_dir)
    result = None
    for split, clips in (("train", world.clips), ("test", world.val_clips)):
        if clips > 0:
            spec = ExportSpec(out=out, clips=clips, frames=world.frames, size=tuple(world.size), seed=world.seed,
                              split=split, fps=world.fps, workers=workers)
            result = export_world(spec)
    assert result is not None, "a world needs clips > 0"
    return result.manifest


def manifest_of(data: DataConfig, run_dir: Path) -> Path:
    return world_folder(data.world, run_dir) / "manifest.csv" if data.world else Path(data.manifest)


def world_records(records: list, world: WorldData) -> list:
    """The clips a world config asks for: a shared cache may hold more (another run rendered more
    clips with the same seed and geometry), and a run must train on exactly its own."""
    wanted = {"train": world.clips, "test": world.val_clips}
    return [r for r in records if r.split in wanted and int(r.clip_id.rsplit("-", 1)[1]) < wanted[r.split]]


def split_records(manifest: Path, val_manifest: str | None, world: WorldData | None = None) -> tuple[list, list]:
    """(train records, validation records): rows with split train / test, or every row when the
    manifest has no splits (then validation comes only from `val_manifest`)."""
    from ..data import read_manifest

    records = read_manifest(manifest)
    if world is not None:
        records = world_records(records, world)
    has_splits = any(r.split for r in records)
    train = [r for r in records if r.split not in VAL_SPLITS] if has_splits else records
    val = [r for r in records if r.split in VAL_SPLITS] if has_splits else []
    if val_manifest:
        val = read_manifest(val_manifest)
    if not train:
        raise ValueError(f"{manifest}: no training clips (every row is in a validation split {VAL_SPLITS})")
    return train, val


def modalities_of(records: list) -> set[str]:
    """Modalities at least one of these clips has a video for."""
    return {name for r in records for name in r.modalities}


def fit_stage_modalities(stage, index: int, records: list, manifest: Path, warn: bool = True) -> None:
    """Make a stage train only the modalities its clips have (annotated videos rarely have all five:
    the built-in teachers make no depth or DensePose). Dropped ones are named in a warning; a stage
    left with none is an error, before any work, naming the manifest and the config key."""
    have = modalities_of(records)
    missing = sorted(m for m in stage.modalities if m not in have)
    if not missing:
        return
    kept = {m: w for m, w in stage.modalities.items() if m in have}
    if not kept:
        raise ValueError(f"stages.{index} ({stage.name}) trains {sorted(stage.modalities)}, but {manifest} has no "
                         f"video of any of them (its modality columns with files: {sorted(have) or 'none'}); set "
                         f"stages.{index}.modalities to some of {sorted(have)}, or annotate those modalities")
    if warn:
        log.warning("stages.%d (%s): %s has no %s videos; the stage trains %s (set stages.%d.modalities to "
                    "silence this)", index, stage.name, manifest, ", ".join(missing), sorted(kept), index)
    stage.modalities = kept


# ----- clips --------------------------------------------------------------------------------------


@dataclass
class SampleRef:
    """What one sample is: its global number, the clip it reads and its route."""

    number: int
    clip: int
    route: Route


def check_clip_lengths(records: list, data: DataConfig) -> None:
    """Fail before any work when no clip is long enough (one short clip is skipped with a warning; all
    of them would leave nothing to train on)."""
    need = (data.frames - 1) * data.frame_stride + 1
    known = [r.frames for r in records if r.frames]
    if records and len(known) == len(records) and max(known) < need:
        raise ValueError(f"data.frames={data.frames} (frame_stride {data.frame_stride}) needs clips of {need} "
                         f"frames, but the longest of these {len(records)} clips has {max(known)} frames; lower "
                         "data.frames (or data.frame_stride)")


class ClipStreams(Dataset):
    """Loads, for a `SampleRef`, the RGB stream and the route's modality stream only (not all five),
    from UnityVideoDatasets sharing one list of records. Optionally keeps decoded clips in memory.
    `crop`: cut `data.train_crop`'s random window from every sample (training clips, not validation)."""

    def __init__(self, records: list, data: DataConfig, seed: int, crop: bool = False):
        from ..data import SkippedClips, UnityVideoDataset

        check_clip_lengths(records, data)
        self.records = records
        self.data = data
        self.skipped_clips = SkippedClips()  # one warning per bad clip, whichever stream found it
        kwargs = dict(frames=data.frames, size=tuple(data.size) if data.size else None,
                      frame_stride=data.frame_stride, random_offset=data.random_offset, seed=seed,
                      skipped_clips=self.skipped_clips)
        self.rgb_only = UnityVideoDataset(records, modalities=[], **kwargs)
        self._kwargs = kwargs
        self._by_modality: dict[str, Any] = {}
        self._memory: dict[tuple, dict] = {}
        self.cache_in_memory = data.cache_in_memory and not data.random_offset
        self.crop = data.train_crop if crop else None
        self.seed = seed

    def __len__(self) -> int:
        return len(self.records)

    def _dataset(self, modality: str | None):
        from ..data import UnityVideoDataset

        if modality is None:
            return self.rgb_only
        if modality not in self._by_modality:
            self._by_modality[modality] = UnityVideoDataset(self.records, modalities=[modality], **self._kwargs)
        return self._by_modality[modality]

    def __getitem__(self, ref: SampleRef) -> dict[str, Any]:
        key = (ref.clip, ref.route.modality)
        if key in self._memory:
            return self._window({**self._memory[key], "number": ref.number, "route": ref.route})
        dataset = self._dataset(ref.route.modality)
        dataset.set_epoch(ref.number // len(self))
        sample = dataset[ref.clip]
        item = {"clip_id": sample["clip_id"], "caption": sample["caption"], "rgb": sample["rgb"],
                "modality": sample["modalities"].get(ref.route.modality) if ref.route.modality else None,
                "frame_indices": sample["frame_indices"]}
        if self.cache_in_memory:
            self._memory[key] = item
        return self._window({**item, "number": ref.number, "route": ref.route})

    def _window(self, item: dict[str, Any]) -> dict[str, Any]:
        """The sample's random train_crop window (the same for its RGB and modality streams), drawn from
        its sample number, so a resumed run cuts the same windows."""
        if self.crop is None:
            return item
        _, frames, height, width = item["rgb"].shape
        f = self.crop.frames or frames
        h, w = self.crop.size or (height, width)
        g = sample_generator(self.seed + 0xC0B, item["number"])
        t0, y0, x0 = (int(torch.randint(0, n - k + 1, (), generator=g)) for n, k in ((frames, f), (height, h), (width, w)))

        def cut(video: torch.Tensor | None) -> torch.Tensor | None:
            return None if video is None else video[:, t0:t0 + f, y0:y0 + h, x0:x0 + w]

        return {**item, "rgb": cut(item["rgb"]), "modality": cut(item["modality"]),
                "frame_indices": item["frame_indices"][t0:t0 + f]}


def collate_samples(items: list[dict]) -> list[dict]:
    """Samples stay a list: each has its own modality, so streams are stacked per routing group."""
    return items


def clip_permutation(num_clips: int, epoch: int, seed: int) -> torch.Tensor:
    return torch.randperm(num_clips, generator=torch.Generator().manual_seed(seed * 7919 + epoch))


class StepBatches:
    """Micro-batches of `SampleRef`s for one process, from `start_step` to the end of the run.

    Yields (step, stage index, micro index, refs). Samples depend only on the global sample number.
    """

    def __init__(self, config: Config, clip_counts: list[int], rank: int, world_size: int, start_step: int):
        self.config = config
        self.clip_counts = clip_counts  # clips of each stage's dataset
        self.rank, self.world_size = rank, world_size
        self.start_step = start_step
        self.per_rank = config.train.batch_size // world_size
        self.micro = config.train.micro_batch_size or self.per_rank
        self._perms: dict[tuple[int, int], torch.Tensor] = {}

    def __iter__(self) -> Iterator[tuple[int, int, int, list[SampleRef]]]:
        cfg = self.config
        for step in range(self.start_step, cfg.total_steps):
            stage_index, stage = cfg.stage_at(step)
            routing = cfg.stage_routing(stage)
            first = step * cfg.train.batch_size + self.rank * self.per_rank
            numbers = list(range(first, first + self.per_rank))
            for m in range(0, self.per_rank, self.micro):
                refs = [self.ref(j, stage_index, routing) for j in numbers[m:m + self.micro]]
                yield step, stage_index, m // self.micro, refs

    def ref(self, number: int, stage_index: int, routing: RoutingConfig) -> SampleRef:
        n = self.clip_counts[stage_index]
        epoch = number // n
        key = (stage_index, epoch)
        if key not in self._perms:
            self._perms = {key: clip_permutation(n, epoch, self.config.train.seed)}  # keep one epoch
        route = draw_route(routing, sample_generator(self.config.train.seed, number))
        return SampleRef(number=number, clip=int(self._perms[key][number % n]), route=route)


def sample_noise(seed: int, number: int, shape: tuple[int, ...], modality: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The flow-matching noise of sample `number`: RGB stream and (if any) modality stream."""
    g = sample_generator(seed + 0x5EED, number)
    rgb = torch.randn(shape, generator=g)
    mod = torch.randn(shape, generator=g)  # drawn even for t2v, so the stream count never shifts the RGB noise
    return rgb, mod if modality else None


# ----- text ---------------------------------------------------------------------------------------


class TextBank:
    """Text features for captions and modality prompts as the transformer takes them (the encoder's
    convention, `models.text`), padded to one fixed length so a sample's features do not depend on
    which other samples share its batch: the longest known prompt when masked, pad_to when zero-padded."""

    def __init__(self, encoder, device: torch.device, convention: str | None = None):
        self.encoder = encoder
        self.device = device
        self.convention = convention or encoder.convention
        self.length = 8

    def warm(self, texts: list[str]) -> None:
        """Encode every known text once (a world has few distinct captions) and fix the padding."""
        unique = sorted(set(texts) | {""})
        for i in range(0, len(unique), 64):
            features, mask = self.encoder.encode(unique[i:i + 64], pad_to=None)
            self.length = max(self.length, int(mask.sum(dim=1).max()))
        self.length = -(-self.length // 8) * 8

    def __call__(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        features, mask = self.encoder.model_inputs(list(texts), length=self.length, convention=self.convention)
        return features.to(self.device), None if mask is None else mask.to(self.device)


# ----- latents ------------------------------------------------------------------------------------


class MemoryLatents:
    """Codec latents kept in memory by (clip id, stream), LatentCache's interface: validation encodes its
    fixed clips once per run instead of once per pass (with a Wan VAE, most of a small run's time)."""

    def __init__(self):
        self._latents: dict[tuple[str, str], torch.Tensor] = {}

    def get(self, clip_id: str, stream: str) -> torch.Tensor | None:
        return self._latents.get((clip_id, stream))

    def put(self, clip_id: str, stream: str, latent: torch.Tensor) -> None:
        self._latents[(clip_id, stream)] = latent.detach()


class LatentCache:
    """Precomputed latents on disk, one safetensors file per (clip, stream, frames, size, codec).

    Only for deterministic frames and crops (the key does not see random offsets)."""

    def __init__(self, folder: str | Path, codec_spec: str, data: DataConfig):
        if data.random_offset:
            raise ValueError("data.latent_cache needs data.random_offset=false (a cached latent is one fixed window)")
        if data.train_crop is not None:
            raise ValueError("data.latent_cache needs data.train_crop=null (a cached latent is one fixed window)")
        self.folder = Path(folder)
        self.tag = f"{codec_spec}|{data.frames}|{data.frame_stride}|{tuple(data.size or ())}"

    def _path(self, clip_id: str, stream: str) -> Path:
        key = hashlib.sha256(f"{self.tag}|{clip_id}|{stream}".encode()).hexdigest()
        return self.folder / key[:2] / f"{key}.safetensors"

    def get(self, clip_id: str, stream: str) -> torch.Tensor | None:
        path = self._path(clip_id, stream)
        return load_file(path)["latent"] if path.exists() else None

    def put(self, clip_id: str, stream: str, latent: torch.Tensor) -> None:
        path = self._path(clip_id, stream)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        save_file({"latent": latent.detach().contiguous().cpu()}, str(tmp))
        os.replace(tmp, path)  # atomic: concurrent processes never see half a file
