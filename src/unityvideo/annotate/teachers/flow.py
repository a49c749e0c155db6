"""Optical-flow teachers: OpenCV DIS (built in, no weights), RAFT (torchvision architecture + a
local weights file) and any TorchScript flow network.

Every flow teacher returns forward flow (F, H, W, 2) in pixels from frame t to t + 1. The last
frame has no next frame inside the call: its flow repeats the previous one and `flow_valid` is
False there (the runner passes one frame past the clip when the video has it, see `lookahead`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Annotation, Teacher, TeacherUnavailable, batches, resolve_device

__all__ = ["DISFlow", "RAFTFlow", "TorchScriptFlow", "pairs_to_clip_flow"]


def pairs_to_clip_flow(pair_flow: np.ndarray, frames: int, height: int, width: int) -> Annotation:
    """(F-1) flows between consecutive frames -> F flows; the last repeats the one before (invalid)."""
    flow = np.zeros((frames, height, width, 2), np.float32)
    valid = np.zeros((frames, height, width), bool)
    if frames > 1:
        flow[:-1] = pair_flow
        flow[-1] = pair_flow[-1]
        valid[:-1] = np.isfinite(pair_flow).all(-1)
    return Annotation(np.nan_to_num(flow), {"flow_valid": valid})


class DISFlow(Teacher):
    """OpenCV's Dense Inverse Search flow (Kroeger et al. 2016) on grey frames: no weights, CPU."""

    modality = "flow"
    lookahead = 1
    PRESETS = ("ultrafast", "fast", "medium")

    def __init__(self, preset: str = "medium"):
        import cv2

        if preset not in self.PRESETS:
            raise TeacherUnavailable(f"DIS flow preset must be one of {self.PRESETS}, got {preset!r}")
        self._cv2 = cv2
        self._dis = cv2.DISOpticalFlow_create(getattr(cv2, f"DISOPTICAL_FLOW_PRESET_{preset.upper()}"))
        self.name = f"opencv-dis-{preset}"

    def annotate(self, frames: np.ndarray) -> Annotation:
        grey = [self._cv2.cvtColor(f, self._cv2.COLOR_RGB2GRAY) for f in frames]
        pairs = np.stack([self._dis.calc(a, b, None) for a, b in zip(grey[:-1], grey[1:])]) \
            if len(frames) > 1 else np.zeros((0, *frames.shape[1:3], 2), np.float32)
        return pairs_to_clip_flow(pairs, *frames.shape[:3])


class _TorchFlow(Teacher):
    """Shared by RAFT and TorchScript: batches of frame pairs through `self._net(img1, img2)`.
    Frames go in as float (B, 3, H, W) in [-1, 1] (RAFT's convention), padded to a multiple of 8."""

    modality = "flow"
    lookahead = 1
    batch_size = 4

    def _forward(self, first, second):
        raise NotImplementedError

    def annotate(self, frames: np.ndarray) -> Annotation:
        import torch
        import torch.nn.functional as F

        n, height, width, _ = frames.shape
        pad_h, pad_w = -height % 8, -width % 8
        pairs = []
        with torch.inference_mode():
            video = torch.from_numpy(frames).to(self.device).permute(0, 3, 1, 2).float() / 127.5 - 1.0
            video = F.pad(video, (0, pad_w, 0, pad_h), mode="replicate")
            for part in batches(n - 1, self.batch_size):
                flow = self._forward(video[part], video[part.start + 1:part.stop + 1])
                pairs.append(flow[:, :2, :height, :width].permute(0, 2, 3, 1).float().cpu().numpy())
        pair_flow = np.concatenate(pairs) if pairs else np.zeros((0, height, width, 2), np.float32)
        return pairs_to_clip_flow(pair_flow, n, height, width)


class RAFTFlow(_TorchFlow):
    """RAFT (Teed & Deng 2020) with torchvision's `raft_large` / `raft_small` architecture and a local
    weights file (.safetensors, or a .pth/.pt state dict loaded with weights_only=True), e.g.
    torchvision's Raft_Large_Weights.C_T_SKHT_V2 file saved beforehand. Needs torchvision."""

    def __init__(self, path: str | Path, device: str | None = None, arch: str | None = None, iterations: int = 12):
        try:
            from torchvision.models import optical_flow
        except Exception as error:  # ImportError, or a torchvision built for another torch
            raise TeacherUnavailable(f"--flow-model {path}: RAFT uses torchvision's architecture, which cannot "
                                     f"be imported here ({type(error).__name__}: {error}); install the torchvision "
                                     "matching your torch, or export RAFT to TorchScript and pass that file") from None
        self.device = resolve_device(device)
        self.iterations = int(iterations)
        state = load_state_dict(Path(path), "--flow-model")
        archs = [arch] if arch else ["raft_large", "raft_small"]
        errors = []
        for name in archs:
            net = getattr(optical_flow, name)(weights=None)
            try:
                net.load_state_dict(state)
            except RuntimeError as error:
                errors.append(f"{name}: {str(error).splitlines()[0]}")
                continue
            self._net, self.name = net.eval().to(self.device), f"torchvision-{name}:{Path(path).name}"
            return
        raise TeacherUnavailable(f"--flow-model {path}: the weights fit neither RAFT architecture ({'; '.join(errors)})")

    MIN_SIDE = 128  # RAFT's correlation pyramid needs feature maps of at least 16 (= 128 px / 8)

    def _forward(self, first, second):
        import torch.nn.functional as F

        scale = -(-self.MIN_SIDE // min(first.shape[-2:]))  # integer upscaling keeps sides multiples of 8
        if scale > 1:
            first, second = (F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                             for x in (first, second))
        flow = self._net(first, second, num_flow_updates=self.iterations)[-1]
        if scale > 1:  # back to the input grid, in input pixels
            flow = F.avg_pool2d(flow, scale) / scale
        return flow


class TorchScriptFlow(_TorchFlow):
    """Any TorchScript flow network `net(img1, img2) -> flow (B, 2, H, W)` (or a list of
    refinements, the last is used), images float (B, 3, H, W) in [-1, 1]."""

    def __init__(self, path: str | Path, device: str | None = None):
        import torch

        self.device = resolve_device(device)
        self._net = load_torchscript(Path(path), "--flow-model", self.device)
        self.name = f"torchscript:{Path(path).name}"

    def _forward(self, first, second):
        out = self._net(first, second)
        return out[-1] if isinstance(out, (list, tuple)) else out


def is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files holding a `code/` folder (plain state dicts do not)."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name or name.startswith("code/") for name in archive.namelist())


def load_torchscript(path: Path, option: str, device: str):
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: file not found")
    try:
        return torch.jit.load(str(path), map_location=device).eval()
    except RuntimeError as error:
        raise TeacherUnavailable(f"{option} {path}: not a TorchScript file ({str(error).splitlines()[0]}); "
                                 "export with torch.jit.script(model).save(path)") from None


def load_state_dict(path: Path, option: str) -> dict:
    """Weights from .safetensors or a .pt/.pth state dict; never unpickles arbitrary objects."""
    import torch

    if not path.is_file():
        raise FileNotFoundError(f"{option} {path}: file not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:
        raise TeacherUnavailable(f"{option} {path}: not a weights-only state dict ({type(error).__name__}); "
                                 "save it with torch.save(model.state_dict(), path) or as .safetensors") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise TeacherUnavailable(f"{option} {path}: expected a state dict, got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}
