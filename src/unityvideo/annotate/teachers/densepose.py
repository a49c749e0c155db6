"""DensePose teachers: a pluggable interface, no built-in model.

No DensePose network ships in a pip package we can depend on, so without `--densepose-model` the
densepose modality is refused with a clear message; a map is never invented. Two ways in:
- a TorchScript file: `net(images float (B, 3, H, W) RGB in [0, 1])` returning either
  an IUV tensor (B, 3, h, w) (I = part index 0..24 as float, U, V in [0, 1]), or the DensePose chart
  head's tuple (part logits (B, 25, h, w), U (B, 25, h, w), V (B, 25, h, w)); any h, w (resized);
- a Python factory `package.module:function` (see teachers.build_teacher), e.g. a wrapper around
  detectron2's DensePose that returns IUV (F, H, W, 3) for uint8 frames.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import Annotation, Teacher, batches, resolve_device
from .flow import load_torchscript

__all__ = ["TorchScriptDensePose", "chart_to_iuv", "NO_DENSEPOSE_MESSAGE"]

NO_DENSEPOSE_MESSAGE = (
    "densepose has no built-in teacher (no DensePose model ships in a pip package), and a map is never "
    "invented: pass --densepose-model PATH (a TorchScript file: images (B,3,H,W) in [0,1] -> IUV (B,3,H,W) "
    "or (part logits, U, V) each (B,25,H,W)) or --densepose-model package.module:factory, or leave "
    "densepose out of --modalities")


def chart_to_iuv(part_logits, u, v):
    """DensePose chart outputs (B, 25, h, w) x 3 -> IUV (B, 3, h, w): the most likely part, and its U, V."""
    import torch

    part = part_logits.argmax(1, keepdim=True)
    pick = lambda x: torch.gather(x, 1, part).clamp(0, 1) * (part > 0)  # noqa: E731
    return torch.cat([part.float(), pick(u), pick(v)], 1)


class TorchScriptDensePose(Teacher):
    modality = "densepose"

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 4):
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._net = load_torchscript(Path(path), "--densepose-model", self.device)
        self.name = f"torchscript:{Path(path).name}"

    def annotate(self, frames: np.ndarray) -> Annotation:
        import torch
        import torch.nn.functional as F

        height, width = frames.shape[1:3]
        out = []
        with torch.inference_mode():
            for part in batches(len(frames), self.batch_size):
                images = torch.from_numpy(frames[part]).to(self.device).permute(0, 3, 1, 2).float() / 255.0
                result = self._net(images)
                if isinstance(result, (tuple, list)):  # chart head: upsample the charts, then pick parts
                    charts = [F.interpolate(x.float(), size=(height, width), mode="bilinear", align_corners=False)
                              for x in result]
                    iuv = chart_to_iuv(*charts)
                else:  # an IUV map is piecewise (part index): nearest keeps it exact
                    iuv = F.interpolate(result.float(), size=(height, width), mode="nearest")
                if iuv.ndim != 4 or iuv.shape[1] != 3:
                    raise ValueError(f"{self.name}: expected IUV (B, 3, H, W) or (part logits, U, V), got {tuple(iuv.shape)}")
                part_index = iuv[:, :1].round().clamp(0, 24)
                iuv = torch.cat([part_index, iuv[:, 1:].clamp(0, 1) * (part_index > 0)], 1)
                out.append(iuv.permute(0, 2, 3, 1).cpu().numpy())
        return Annotation(np.concatenate(out).astype(np.float32))
