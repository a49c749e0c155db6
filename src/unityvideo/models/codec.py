"""Latent codecs: video (B, 3, F, H, W) in [-1, 1] <-> latent (B, C, F', H', W').

Two codecs, one interface:
- `PixelCodec`: space-to-depth, no weights (the tiny world's default): 2x2 -> 12 channels, 4x4 -> 48;
  no temporal compression, any frame count.
- `WanVAECodec`: diffusers' `AutoencoderKLWan` from a local folder (Wan2.1: 16 channels, x8 spatial;
  Wan2.2: 48 channels, x16), frames 4k + 1, latents normalised with the VAE's latents_mean / std
  exactly as Wan's pipelines do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn


@dataclass(frozen=True)
class LatentGeometry:
    """How a codec maps a video's shape to its latent's: channels and compression factors.

    causal: Wan's VAE keeps the first frame on its own, so F = temporal * k + 1 -> k + 1 latent frames.
    """

    channels: int
    temporal: int
    spatial: int
    causal: bool = False

    def check_frames(self, frames: int) -> None:
        """Raise a clear error when the codec cannot encode `frames` frames."""
        if frames < 1:
            raise ValueError(f"a video needs at least 1 frame, got {frames}")
        if self.causal and (frames - 1) % self.temporal:
            below = (frames - 1) // self.temporal * self.temporal + 1
            raise ValueError(f"this codec needs {self.temporal}k + 1 frames (1, {1 + self.temporal}, "
                             f"{1 + 2 * self.temporal}, ...), got {frames}; use {below} or {below + self.temporal}")
        if not self.causal and frames % self.temporal:
            raise ValueError(f"this codec needs a multiple of {self.temporal} frames, got {frames}")

    def check_size(self, height: int, width: int) -> None:
        if height % self.spatial or width % self.spatial:
            raise ValueError(f"frame size {height}x{width} is not divisible by the codec's spatial factor "
                             f"{self.spatial}; crop or resize to a multiple of {self.spatial}")

    def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
        """(C, F', H', W') of the latent of a (3, frames, height, width) video."""
        self.check_frames(frames)
        self.check_size(height, width)
        latent_frames = (frames - 1) // self.temporal + 1 if self.causal else frames // self.temporal
        return self.channels, latent_frames, height // self.spatial, width // self.spatial


# Geometry of the codecs the presets are meant for (no weights needed to plan shapes).
CODEC_GEOMETRY = {
    "pixel2": LatentGeometry(channels=12, temporal=1, spatial=2),
    "pixel4": LatentGeometry(channels=48, temporal=1, spatial=4),
    "wan2.1": LatentGeometry(channels=16, temporal=4, spatial=8, causal=True),
    "wan2.2": LatentGeometry(channels=48, temporal=4, spatial=16, causal=True),
}


class LatentCodec(nn.Module):
    """Common interface: `encode`, `decode`, `latent_channels`, `temporal_factor`, `spatial_factor`,
    `check_frames`. Subclasses set `self.geometry` and implement `_encode` / `_decode`."""

    geometry: LatentGeometry

    @property
    def latent_channels(self) -> int:
        return self.geometry.channels

    @property
    def temporal_factor(self) -> int:
        return self.geometry.temporal

    @property
    def spatial_factor(self) -> int:
        return self.geometry.spatial

    def check_frames(self, frames: int) -> None:
        self.geometry.check_frames(frames)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video (B, 3, F, H, W) in [-1, 1] -> latent (B, C, F', H', W')."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be (B, 3, F, H, W), got {tuple(video.shape)}")
        self.geometry.latent_shape(*video.shape[2:])  # checks frames and size
        return self._encode(video)

    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        """latent (B, C, F', H', W') -> video (B, 3, F, H, W) in [-1, 1]."""
        if latent.ndim != 5 or latent.shape[1] != self.latent_channels:
            raise ValueError(f"latent must be (B, {self.latent_channels}, F, H, W), got {tuple(latent.shape)}")
        return self._decode(latent)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class PixelCodec(LatentCodec):
    """Space-to-depth: each factor x factor pixel block becomes 3 * factor^2 channels (exact, no weights)."""

    def __init__(self, factor: int = 4):
        super().__init__()
        if factor < 1:
            raise ValueError(f"PixelCodec factor must be >= 1, got {factor}")
        self.factor = factor
        self.geometry = LatentGeometry(channels=3 * factor * factor, temporal=1, spatial=factor)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = video.shape
        p = self.factor
        x = video.reshape(b, c, f, h // p, p, w // p, p)
        return x.permute(0, 1, 4, 6, 2, 3, 5).reshape(b, c * p * p, f, h // p, w // p)  # channel-major

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        b, _, f, h, w = latent.shape
        p = self.factor
        x = latent.reshape(b, 3, p, p, f, h, w)
        return x.permute(0, 1, 4, 5, 2, 6, 3).reshape(b, 3, f, h * p, w * p)


class WanVAECodec(LatentCodec):
    """Wan's causal 3D VAE, latents normalised to ~N(0, 1) with the VAE's own latents_mean / std.

    sample: draw from the posterior (training augmentation) instead of taking its mode.
    """

    def __init__(self, vae, sample: bool = False):
        super().__init__()
        cfg = vae.config
        if len(cfg.latents_mean) != cfg.z_dim or len(cfg.latents_std) != cfg.z_dim:
            raise ValueError(f"Wan VAE config: latents_mean / latents_std have {len(cfg.latents_mean)} / "
                             f"{len(cfg.latents_std)} entries, expected z_dim={cfg.z_dim}")
        self.vae = vae
        self.sample = sample
        self.geometry = LatentGeometry(channels=cfg.z_dim, temporal=cfg.scale_factor_temporal,
                                       spatial=cfg.scale_factor_spatial, causal=True)
        shape = (1, cfg.z_dim, 1, 1, 1)
        self.register_buffer("mean", torch.tensor(cfg.latents_mean, dtype=torch.float32).view(shape), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.latents_std, dtype=torch.float32).view(shape), persistent=False)

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        sample: bool = False) -> "WanVAECodec":
        """Load `AutoencoderKLWan` from a local folder (or a pipeline folder with a `vae/` subfolder)."""
        from diffusers import AutoencoderKLWan

        folder = Path(folder)
        if not (folder / "config.json").exists() and (folder / "vae" / "config.json").exists():
            folder = folder / "vae"
        if not (folder / "config.json").exists():
            raise FileNotFoundError(f"{folder / 'config.json'}: missing; pass a local AutoencoderKLWan folder "
                                    "(config.json + diffusion_pytorch_model.safetensors); nothing is downloaded")
        vae = AutoencoderKLWan.from_pretrained(folder, torch_dtype=torch_dtype, local_files_only=True)
        return cls(vae.eval().requires_grad_(False), sample=sample)

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        posterior = self.vae.encode(video.to(self.vae.dtype)).latent_dist
        z = posterior.sample() if self.sample else posterior.mode()
        return ((z.float() - self.mean) / self.std).to(video.dtype)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        z = latent.float() * self.std + self.mean
        video = self.vae.decode(z.to(self.vae.dtype)).sample
        return video.clamp(-1, 1).to(latent.dtype)


LATENT_NORMS = ("none", "per_stream")


@dataclass(frozen=True)
class LatentNorm:
    """Per-stream affine map of codec latents to zero mean and unit std, (latent - mean) / std.

    The modalities differ wildly in spread: on the world, depth latents have std 0.66 but flow 0.12 and
    DensePose 0.18 (mostly an empty background). Without the map the same timestep drowns a sparse
    stream in noise far earlier than RGB, and its loss weighs little, so the model learns its
    background and little else. Streams without an entry pass through unchanged."""

    stats: dict[str, tuple[float, float]]

    @classmethod
    def measure(cls, latents: dict[str, list[torch.Tensor]], min_std: float = 1e-3) -> "LatentNorm":
        """Mean and std over every element of each stream's sample latents."""
        stats = {}
        for stream, values in latents.items():
            flat = torch.cat([v.detach().double().flatten().cpu() for v in values])
            stats[stream] = (float(flat.mean()), max(float(flat.std()), min_std))
        return cls(stats)

    def normalize(self, latent: torch.Tensor, stream: str) -> torch.Tensor:
        if stream not in self.stats:
            return latent
        mean, std = self.stats[stream]
        return (latent - mean) / std

    def denormalize(self, latent: torch.Tensor, stream: str) -> torch.Tensor:
        if stream not in self.stats:
            return latent
        mean, std = self.stats[stream]
        return latent * std + mean

    def to_json(self) -> dict[str, list[float]]:
        """Exact (JSON floats round-trip): a resumed run must normalise exactly as the run it continues."""
        return {k: [m, s] for k, (m, s) in self.stats.items()}

    @classmethod
    def from_json(cls, raw: dict | None) -> "LatentNorm":
        return cls({k: (float(v[0]), float(v[1])) for k, v in (raw or {}).items()})


UNKNOWN_CODEC = "unknown codec {!r}; choose pixel2, pixel4, wan2.1 or wan2.2"


def pixel_factor(name: str) -> int | None:
    """The space-to-depth factor of a `pixelN` codec name (None for any other name)."""
    return int(name[5:]) if name.startswith("pixel") and name[5:].isdigit() else None


def codec_geometry(name: str) -> LatentGeometry:
    """Shape rules of a codec by name, without loading its weights."""
    factor = pixel_factor(name)
    if factor is not None:
        return LatentGeometry(channels=3 * factor * factor, temporal=1, spatial=factor)
    if name not in CODEC_GEOMETRY:
        raise ValueError(UNKNOWN_CODEC.format(name))
    return CODEC_GEOMETRY[name]


def load_codec(spec: str, folder: str | Path | None = None, **kwargs) -> LatentCodec:
    """`pixel2` / `pixel4` (no weights) or `wan2.1` / `wan2.2` (a local VAE folder, shapes checked)."""
    if pixel_factor(spec) is not None:
        return PixelCodec(pixel_factor(spec))
    if spec in ("wan2.1", "wan2.2"):
        if folder is None:
            raise ValueError(f"codec {spec!r} needs the local folder of its VAE weights (folder=...)")
        codec = WanVAECodec.from_pretrained(folder, **kwargs)
        want = CODEC_GEOMETRY[spec]
        if (codec.latent_channels, codec.spatial_factor) != (want.channels, want.spatial):
            raise ValueError(f"{folder}: this VAE has {codec.latent_channels} channels x{codec.spatial_factor}, "
                             f"but {spec!r} is {want.channels} channels x{want.spatial}; check the folder")
        return codec
    raise ValueError(UNKNOWN_CODEC.format(spec))
