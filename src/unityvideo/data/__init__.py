"""Data room: video files, manifests, raw ground truth, aligned sampling and the training Dataset."""
from .dataset import SKIP_REASONS, SkippedClips, UnityVideoDataset, collate_clips
from .manifest import AUTHORS_COLUMNS, ClipRecord, ManifestError, read_manifest, write_manifest
from .raw import RawReadError, load_raw, save_raw
from .transforms import (CropPlan, apply_crop, crop_raw, frames_to_tensor, plan_crop, sample_frame_indices,
                         tensor_to_frames)
from .video import VideoReadError, probe_video, read_video, write_video

__all__ = [
    "UnityVideoDataset", "SkippedClips", "collate_clips", "SKIP_REASONS",
    "ClipRecord", "ManifestError", "read_manifest", "write_manifest", "AUTHORS_COLUMNS",
    "save_raw", "load_raw", "RawReadError",
    "CropPlan", "plan_crop", "apply_crop", "crop_raw", "sample_frame_indices", "frames_to_tensor",
    "tensor_to_frames",
    "write_video", "read_video", "probe_video", "VideoReadError",
]
