"""Teacher models, one per modality, behind one small interface (`Teacher`), built by a registry.

`build_teacher(modality, spec)` where spec is
- None: the modality's built-in teacher (flow: OpenCV DIS; segmentation and skeleton: MediaPipe on
  OpenCV HOG person crops); depth and densepose have none and say what to pass;
- a registered name: "dis" / "dis-fast" / "dis-ultrafast" (flow), "mediapipe" (segmentation, skeleton);
- a local path: a transformers folder (depth: Depth Anything / DPT / ...; segmentation: Mask2Former /
  MaskFormer / OneFormer / SAM; skeleton: ViTPose), or a file (flow: RAFT weights for torchvision's
  architecture, or TorchScript; densepose: TorchScript);
- "package.module:factory": a plugin; factory(device=...) returns a Teacher or a plain callable
  frames uint8 (F, H, W, 3) -> raw.
`register_teacher(modality, name, factory)` adds a named teacher.
"""
from __future__ import annotations

import importlib
import json
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ...modalities import canonical_name
from .base import Annotation, Teacher, TeacherUnavailable
from .densepose import NO_DENSEPOSE_MESSAGE

__all__ = ["Teacher", "Annotation", "TeacherUnavailable", "build_teacher", "register_teacher", "BUILTIN_TEACHERS",
           "registered_teachers"]

BUILTIN_TEACHERS = {"flow": "dis", "segmentation": "mediapipe", "skeleton": "mediapipe"}

_NO_BUILTIN = {
    "depth": "depth has no built-in teacher: pass --depth-model FOLDER, a local transformers depth-estimation "
             "model (e.g. Depth-Anything-V2-Small-hf or dpt-hybrid-midas saved with save_pretrained)",
    "densepose": NO_DENSEPOSE_MESSAGE,
}


def _dis(preset: str) -> Callable[..., Teacher]:
    def make(device: str | None = None) -> Teacher:
        from .flow import DISFlow

        return DISFlow(preset)
    return make


def _mediapipe_segmentation(device: str | None = None) -> Teacher:
    from .segmentation import MediaPipePeople

    return MediaPipePeople()


def _mediapipe_pose(device: str | None = None) -> Teacher:
    from .skeleton import MediaPipePose

    return MediaPipePose()


_REGISTRY: dict[tuple[str, str], Callable[..., Teacher]] = {
    ("flow", "dis"): _dis("medium"), ("flow", "dis-fast"): _dis("fast"), ("flow", "dis-ultrafast"): _dis("ultrafast"),
    ("segmentation", "mediapipe"): _mediapipe_segmentation,
    ("skeleton", "mediapipe"): _mediapipe_pose,
}


def register_teacher(modality: str, name: str, factory: Callable[..., Teacher]) -> None:
    """Make `build_teacher(modality, name)` call `factory(device=...)`."""
    _REGISTRY[(canonical_name(modality), name)] = factory


def registered_teachers(modality: str) -> list[str]:
    modality = canonical_name(modality)
    return sorted(name for m, name in _REGISTRY if m == modality)


class CallableTeacher(Teacher):
    """Wraps a plugin's plain function frames -> raw into a Teacher."""

    def __init__(self, function: Callable[[np.ndarray], Any], modality: str, name: str, lookahead: int = 0):
        self._function, self.modality, self.name, self.lookahead = function, modality, name, lookahead

    def annotate(self, frames: np.ndarray) -> Annotation:
        out = self._function(frames)
        return out if isinstance(out, Annotation) else Annotation(np.asarray(out))


def _plugin(modality: str, spec: str, device: str | None) -> Teacher:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise TeacherUnavailable(f"--{modality}-model {spec}: cannot import the factory ({error})") from None
    made = factory(device=device)
    if isinstance(made, Teacher):
        if made.modality and made.modality != modality:
            raise TeacherUnavailable(f"--{modality}-model {spec}: the factory made a {made.modality} teacher")
        made.modality = modality
        return made
    if not callable(made):
        raise TeacherUnavailable(f"--{modality}-model {spec}: the factory must return a Teacher or a callable")
    return CallableTeacher(made, modality, f"plugin:{spec}", lookahead=1 if modality == "flow" else 0)


def _model_type(folder: Path) -> str:
    try:
        return str(json.loads((folder / "config.json").read_text()).get("model_type", ""))
    except (OSError, ValueError):
        return ""


def _from_folder(modality: str, folder: Path, device: str | None) -> Teacher:
    option = f"--{modality}-model {folder}"
    if modality == "depth":
        from .depth import TransformersDepth

        return TransformersDepth(folder, device)
    if modality == "segmentation":
        from .segmentation import SamBoxes, TransformersSegmentation

        if _model_type(folder).startswith("sam"):
            return SamBoxes(folder, device)
        return TransformersSegmentation(folder, device)
    if modality == "skeleton":
        from .skeleton import TransformersViTPose

        return TransformersViTPose(folder, device)
    raise TeacherUnavailable(f"{option}: a folder is not a {modality} model; pass a "
                             + ("RAFT weights or TorchScript file" if modality == "flow" else "TorchScript file"))


def _from_file(modality: str, path: Path, device: str | None) -> Teacher:
    from .flow import RAFTFlow, TorchScriptFlow, is_torchscript

    if modality == "flow":
        return TorchScriptFlow(path, device) if is_torchscript(path) else RAFTFlow(path, device)
    if modality == "densepose":
        from .densepose import TorchScriptDensePose

        return TorchScriptDensePose(path, device)
    raise TeacherUnavailable(f"--{modality}-model {path}: {modality} models are folders (transformers "
                             "save_pretrained), not single files")


def build_teacher(modality: str, spec: str | Path | None = None, device: str | None = None) -> Teacher:
    """The teacher for `modality` from a spec (see the module docstring); errors say what to pass."""
    modality = canonical_name(modality)
    if modality == "rgb":
        raise ValueError("rgb is the input of the teachers, not an annotated modality")
    if spec is None:
        if modality not in BUILTIN_TEACHERS:
            raise TeacherUnavailable(_NO_BUILTIN[modality])
        spec = BUILTIN_TEACHERS[modality]
    spec = str(spec)
    if (modality, spec) in _REGISTRY:
        return _REGISTRY[(modality, spec)](device=device)
    path = Path(spec).expanduser()
    if path.exists():
        return _from_folder(modality, path, device) if path.is_dir() else _from_file(modality, path, device)
    if re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", spec):
        return _plugin(modality, spec, device)
    names = ", ".join(registered_teachers(modality)) or "none"
    raise FileNotFoundError(f"--{modality}-model {spec}: no such file or folder (built-in {modality} teachers: {names}; "
                            "plugins: package.module:factory)")

