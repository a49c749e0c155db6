"""Instance-segmentation teachers, ids kept consistent over a clip by IoU tracking.

- `MediaPipePeople` (built in): MediaPipe's person segmentation (selfie_segmentation.tflite, shipped
  in mediapipe 0.10.14) on a crop around every tracked HOG person, or on the whole frame when HOG
  finds nobody (then each connected blob is a person). Only people are segmented.
- `TransformersSegmentation`: Mask2Former / MaskFormer / OneFormer (instance post-processing) from a
  local folder; every detected "thing" becomes an instance, its class name kept in the metadata.
- `SamBoxes`: a SAM-family model (transformers SamModel) prompted with the tracked HOG person boxes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from ..tracking import masks_to_id_map, track_masks
from .base import Annotation, Teacher, TeacherUnavailable, batches, load_transformers, model_folder, resolve_device
from .people import detect_people, import_mediapipe, square_crop

__all__ = ["MediaPipePeople", "TransformersSegmentation", "SamBoxes", "finish_instances"]

CROP_SIZE = 256  # selfie_segmentation's general model runs at 256 x 256


def finish_instances(frames_masks: list[np.ndarray], frames_scores: list[np.ndarray], frames_labels: list[list[str]],
                     shape: tuple[int, int]) -> Annotation:
    """Track per-frame masks into a (F, H, W) id map; instances meta = [{"id", "kind"}] (kind = the
    class of the track's first detection)."""
    ids, tracker = track_masks(frames_masks, frames_scores, shape=shape)
    kinds: dict[int, str] = {}
    # The id each mask was given, not the id most of its pixels show: a higher-scored mask painted
    # over most of it would hand its label to the wrong track (and leave its own track "object").
    for labels, given in zip(frames_labels, tracker.frame_ids):
        for label, i in zip(labels, given):
            if i:
                kinds.setdefault(int(i), label)
    instances = [{"id": i, "kind": kinds.get(i, "object")} for i in sorted(set(np.unique(ids).tolist()) - {0})]
    return Annotation(ids, meta={"instances": instances, "tracking_dropped": tracker.dropped})


class MediaPipePeople(Teacher):
    """People only: MediaPipe person segmentation on HOG person crops (see people.py)."""

    modality = "segmentation"
    name = "mediapipe-selfie-segmentation+opencv-hog"

    def __init__(self, threshold: float = 0.5, min_area: float = 0.002, hog_upscale: float = 1.0):
        mp = import_mediapipe("segmentation")
        import cv2

        self._cv2 = cv2
        self._crop_model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
        self._frame_model = mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=1)
        self.threshold, self.min_area, self.hog_upscale = threshold, min_area, hog_upscale

    def _crop_probability(self, frame: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, tuple[int, int, int, int]]:
        height, width = frame.shape[:2]
        x0, y0, x1, y1 = square_crop(box, height, width)
        crop = self._cv2.resize(frame[y0:y1, x0:x1], (CROP_SIZE, CROP_SIZE), interpolation=self._cv2.INTER_CUBIC)
        prob = self._crop_model.process(crop).segmentation_mask
        return self._cv2.resize(prob, (x1 - x0, y1 - y0), interpolation=self._cv2.INTER_LINEAR), (x0, y0, x1, y1)

    def _frame_masks(self, frame: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        height, width = frame.shape[:2]
        if len(boxes) == 0:  # nobody found by HOG: a close-up, segment the whole frame
            blobs, count = ndimage.label(self._frame_model.process(frame).segmentation_mask > self.threshold)
            masks = [blobs == k for k in range(1, count + 1)]
            return np.array([m for m in masks if m.mean() >= self.min_area], bool).reshape(-1, height, width)
        probs = np.zeros((len(boxes), height, width), np.float32)
        for k, box in enumerate(boxes):
            prob, (x0, y0, x1, y1) = self._crop_probability(frame, box)
            # Only inside the person's own box (grown 10 %), so a neighbour in the crop is not taken.
            grow_x, grow_y = 0.1 * (box[2] - box[0]), 0.1 * (box[3] - box[1])
            inside = np.zeros((height, width), bool)
            inside[int(max(0, box[1] - grow_y)):int(box[3] + grow_y) + 1, int(max(0, box[0] - grow_x)):int(box[2] + grow_x) + 1] = True
            probs[k, y0:y1, x0:x1] = prob
            probs[k] *= inside
        best = probs.argmax(0)
        return np.stack([(best == k) & (probs[k] > self.threshold) for k in range(len(boxes))])

    def annotate(self, frames: np.ndarray) -> Annotation:
        people = detect_people(frames, upscale=self.hog_upscale)
        masks = [self._frame_masks(frame, boxes) for frame, boxes in zip(frames, people.boxes)]
        # A frame may have nobody: (0, H, W) masks, so the flat view names its size (-1 is ambiguous at 0).
        pixels = int(np.prod(frames.shape[1:3]))
        if all(len(boxes) or not len(m) for boxes, m in zip(people.boxes, masks)):
            # Every mask belongs to a HOG track: its id is the track's. Re-tracking the masks (whose
            # outlines change with every step) would only add identity switches.
            ids = np.stack([masks_to_id_map(m, [int(i) for i in track], m.reshape(len(m), pixels).sum(1), m.shape[1:])
                            if len(m) else np.zeros(frames.shape[1:3], np.uint8) for m, track in zip(masks, people.ids)])
            instances = [{"id": i, "kind": "person"} for i in sorted(set(np.unique(ids).tolist()) - {0})]
            return Annotation(ids, meta={"instances": instances, "tracking_dropped": 0})
        masks = [m[m.reshape(len(m), pixels).any(1)] for m in masks]
        scores = [m.reshape(len(m), pixels).sum(1).astype(np.float32) for m in masks]  # larger person on top
        return finish_instances(masks, scores, [["person"] * len(m) for m in masks], frames.shape[1:3])


class TransformersSegmentation(Teacher):
    """Mask2Former / MaskFormer / OneFormer from a local folder, instance post-processing (OneFormer:
    its processor with the task tokenizer, and the class_info_file its processor config names)."""

    modality = "segmentation"
    MODEL_TYPES = ("mask2former", "maskformer", "oneformer")

    def __init__(self, path: str | Path, device: str | None = None, batch_size: int = 2, threshold: float = 0.5):
        folder = model_folder(path, "--segmentation-model")
        self.device = resolve_device(device)
        self.batch_size, self.threshold = batch_size, threshold
        self._model, self._processor = load_transformers(folder, "--segmentation-model",
                                                         "AutoModelForUniversalSegmentation", self.device)
        self.model_type = self._model.config.model_type
        if self.model_type not in self.MODEL_TYPES:
            raise TeacherUnavailable(f"--segmentation-model {folder}: model type {self.model_type!r} is not supported; "
                                     f"use one of {self.MODEL_TYPES} or a SAM model")
        if self.model_type == "oneformer":
            self._processor = _oneformer_processor(folder)
        self.name = f"transformers-{self.model_type}:{folder.name}"

    def _inputs(self, images: list[np.ndarray]):
        if self.model_type == "oneformer":
            return self._processor(images=images, task_inputs=["instance"] * len(images), return_tensors="pt")
        return self._processor(images=images, return_tensors="pt")

    def _post_process(self, outputs, count: int, shape: tuple[int, int]) -> list[dict]:
        if self.model_type == "oneformer":
            # OneFormer's PIL processor resizes to target_sizes with torchvision (a NameError without it):
            # upsample the mask logits here instead, the same bilinear resize, and ask for no resize.
            # Its instance post-processing thresholds score * mask *logits* (no sigmoid), so 0.5 would
            # need logits >= 0.5 / score; 0 keeps logit > 0 = probability > 0.5, Mask2Former's rule.
            import torch.nn.functional as F

            outputs.masks_queries_logits = F.interpolate(outputs.masks_queries_logits, size=shape, mode="bilinear",
                                                         align_corners=False)
            return self._processor.post_process_instance_segmentation(outputs, threshold=self.threshold,
                                                                      mask_threshold=0.0)
        return self._processor.post_process_instance_segmentation(outputs, threshold=self.threshold,
                                                                  target_sizes=[shape] * count)

    def annotate(self, frames: np.ndarray) -> Annotation:
        import torch

        shape = frames.shape[1:3]
        id2label = self._model.config.id2label
        masks, scores, labels = [], [], []
        with torch.inference_mode():
            for part in batches(len(frames), self.batch_size):
                outputs = self._model(**self._inputs(list(frames[part])).to(self.device))
                results = self._post_process(outputs, part.stop - part.start, shape)
                for result in results:
                    segmentation = result["segmentation"].cpu().numpy()
                    infos = result["segments_info"]
                    masks.append(np.array([segmentation == info["id"] for info in infos], bool).reshape(-1, *shape))
                    scores.append(np.array([info["score"] for info in infos], np.float32))
                    labels.append([str(id2label.get(info["label_id"], info["label_id"])) for info in infos])
        return finish_instances(masks, scores, labels, shape)


def _oneformer_processor(folder: Path):
    """OneFormer's full processor: the image processor alone leaves the task prompt ("the task is
    instance") a string, and the model needs it tokenized."""
    import transformers

    try:
        return transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, TypeError) as error:
        raise TeacherUnavailable(f"--segmentation-model {folder}: OneFormer needs its processor with the task "
                                 f"tokenizer saved next to the model ({error})") from None


class SamBoxes(Teacher):
    """A SAM-family model (transformers SamModel / compatible) prompted with tracked person boxes."""

    modality = "segmentation"

    def __init__(self, path: str | Path, device: str | None = None, hog_upscale: float = 1.0):
        import transformers

        folder = model_folder(path, "--segmentation-model")
        self.device = resolve_device(device)
        self.hog_upscale = hog_upscale
        try:
            self._processor = transformers.AutoProcessor.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError) as error:
            raise TeacherUnavailable(f"--segmentation-model {folder}: no SAM processor could be loaded ({error})") from None
        self._model = transformers.AutoModel.from_pretrained(folder, local_files_only=True).eval().to(self.device)
        self.name = f"transformers-{self._model.config.model_type}+opencv-hog:{folder.name}"

    def annotate(self, frames: np.ndarray) -> Annotation:
        import torch

        people = detect_people(frames, upscale=self.hog_upscale)
        shape = frames.shape[1:3]
        masks, scores = [], []
        with torch.inference_mode():
            for frame, boxes in zip(frames, people.boxes):
                if len(boxes) == 0:
                    masks.append(np.zeros((0, *shape), bool)), scores.append(np.zeros(0, np.float32))
                    continue
                inputs = self._processor(images=frame, input_boxes=[boxes.tolist()], return_tensors="pt").to(self.device)
                out = self._model(**inputs, multimask_output=False)
                found = self._processor.post_process_masks(out.pred_masks.cpu(), inputs["original_sizes"].cpu(),
                                                           inputs["reshaped_input_sizes"].cpu())[0]
                masks.append(found[:, 0].numpy().astype(bool))
                scores.append(out.iou_scores[0, :, 0].float().cpu().numpy())
        return finish_instances(masks, scores, [["person"] * len(m) for m in masks], shape)
