"""Video IO exactness, manifests (CSV/JSONL, authors' columns, errors), raw npz, and the Dataset:
aligned sampling across streams and skipping of bad clips."""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from unityvideo.data import (ClipRecord, ManifestError, RawReadError, UnityVideoDataset, VideoReadError,
                             collate_clips, load_raw, probe_video, read_manifest, read_video, save_raw,
                             tensor_to_frames, write_manifest, write_video)
from unityvideo.modalities import MODALITY_NAMES, default_max_flow, get_modality


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def rendered_scene(n_frames, height, width, seed=0):
    """A render-like clip: shaded ground gradient, moving coloured discs, mild sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    frames = []
    for t in range(n_frames):
        image = np.stack([100 + 80 * y / height, 140 + 60 * y / height, 200 - 50 * y / height], -1)
        for cx, cy, r, colour in [(0.3, 0.5, 0.15, (220, 40, 40)), (0.6, 0.6, 0.2, (40, 200, 60))]:
            inside = (x - (cx + 0.01 * t) * width) ** 2 + (y - cy * height) ** 2 < (r * min(height, width)) ** 2
            image[inside] = np.array(colour) * (0.7 + 0.3 * x[inside, None] / width)
        frames.append(image + rng.normal(0, 2, image.shape))
    return np.clip(np.stack(frames), 0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------- video

@pytest.mark.parametrize("shape", [(16, 64, 64), (33, 256, 256), (5, 63, 97), (1, 1, 1), (2, 17, 9)])
@pytest.mark.parametrize("suffix", [".mkv", ".mp4"])
def test_lossless_video_is_exact(tmp_path, shape, suffix):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, shape + (3,), dtype=np.uint8)
    path = write_video(tmp_path / f"clip{suffix}", frames, fps=12, lossless=True)
    assert np.array_equal(read_video(path), frames)
    assert probe_video(path) == (shape[0], shape[1], shape[2], 12.0)
    assert np.array_equal(read_video(path, [0, 0]), frames[[0, 0]])


@pytest.mark.parametrize("shape", [(16, 64, 64), (9, 63, 97)])
def test_rgb_video_is_near_lossless(tmp_path, shape):
    frames = rendered_scene(*shape)
    path = write_video(tmp_path / "rgb.mp4", frames, fps=16, lossless=False)
    decoded = read_video(path)
    assert decoded.shape == frames.shape
    assert psnr(decoded, frames) > 38.0  # measured ~39.5 dB with sigma-2 noise, > 45 dB without
    assert path.stat().st_size < frames.nbytes / 4


def test_video_errors_name_the_file(tmp_path):
    with pytest.raises(VideoReadError, match="missing.mkv.*not found"):
        read_video(tmp_path / "missing.mkv")
    bad = tmp_path / "bad.mkv"
    bad.write_bytes(b"not a video" * 20)
    with pytest.raises(VideoReadError, match="bad.mkv"):
        read_video(bad)
    with pytest.raises(VideoReadError, match="bad.mkv"):
        probe_video(bad)
    path = write_video(tmp_path / "short.mkv", np.zeros((3, 8, 8, 3), np.uint8))
    with pytest.raises(VideoReadError, match="frame 5 requested"):
        read_video(path, [5])
    with pytest.raises(ValueError, match="uint8"):
        write_video(tmp_path / "x.mkv", np.zeros((2, 8, 8, 3), np.float32))


# ----------------------------------------------------------------------------- manifest

def test_manifest_round_trip_csv_and_jsonl(tmp_path):
    records = [ClipRecord(clip_id=f"clip{i}", rgb=tmp_path / f"clips/clip{i}/rgb.mp4", caption=f"a, \"quoted\" caption {i}",
                          modalities={"depth": tmp_path / f"clips/clip{i}/depth.mkv",
                                      "flow": tmp_path / f"clips/clip{i}/flow.mkv"},
                          raw=tmp_path / f"clips/clip{i}/raw.npz", split="train", seed=i, frames=16,
                          height=64, width=48, fps=16.0, depth_near=1.5, flow_max=8.0)
               for i in range(3)]
    for name in ("manifest.csv", "manifest.jsonl"):
        path = write_manifest(tmp_path / name, records)
        assert read_manifest(path) == records
    header = (tmp_path / "manifest.csv").read_text().splitlines()[0].split(",")
    assert header[:7] == ["video", "prompt", "depth", "densepose", "raft", "segmentation", "skeleton"]
    assert "clips/clip0/rgb.mp4" in (tmp_path / "manifest.csv").read_text()  # relative paths


def test_manifest_relative_record_paths_and_seed_strings(tmp_path):
    record = ClipRecord(clip_id="train-00003", rgb="clips/train-00003/rgb.mp4", caption="c",
                        modalities={"flow": "clips/train-00003/flow.mkv"}, raw="clips/train-00003/raw.npz",
                        seed="0/train/3")
    path = write_manifest(tmp_path / "out" / "manifest.csv", [record])
    assert "clips/train-00003/rgb.mp4,c,,,clips/train-00003/flow.mkv" in path.read_text()
    (back,) = read_manifest(path)
    assert back.rgb == tmp_path / "out/clips/train-00003/rgb.mp4" and back.seed == "0/train/3"
    assert back.modalities == {"flow": tmp_path / "out/clips/train-00003/flow.mkv"}


def test_manifest_authors_and_canonical_columns(tmp_path):
    (tmp_path / "metadata.csv").write_text(
        "video,prompt,depth,densepose,raft,segmentation,skeleton\n"
        "videos/a.mp4,a red ball,depth/a.mp4,densepose/a.mp4,raft/a.mp4,segmentation/a.mp4,skeleton/a.mp4\n"
        "videos/b.mp4,two people,depth/b.mp4,,,,\n")
    a, b = read_manifest(tmp_path / "metadata.csv")
    assert a.rgb == tmp_path / "videos/a.mp4" and a.caption == "a red ball" and a.clip_id == "videos/a"
    assert set(a.modalities) == set(MODALITY_NAMES)
    assert a.modalities["flow"] == tmp_path / "raft/a.mp4"
    assert set(b.modalities) == {"depth"}
    (tmp_path / "canonical.jsonl").write_text('{"rgb": "x/rgb.mp4", "caption": "c", "flow": "x/f.mkv", "Seg": "x/s.mkv"}\n')
    (record,) = read_manifest(tmp_path / "canonical.jsonl")
    assert record.modalities == {"flow": tmp_path / "x/f.mkv", "segmentation": tmp_path / "x/s.mkv"}


@pytest.mark.parametrize("text,pattern", [
    ("prompt,depth\nc,d.mkv\n", r"bad.csv: missing required column 'video' or 'rgb'.*Add the column"),
    ("video,depth\na.mp4,d.mkv\n", r"missing required column 'prompt' or 'caption'"),
    ("video,prompt\na.mp4,ok\n,empty\n", r"bad.csv line 3, column 'video': empty RGB video path"),
    ("video,prompt,frames\na.mp4,c,abc\n", r"bad.csv line 2, column 'frames': expected a positive integer, got 'abc'.*fix"),
    ("video,prompt,fps\na.mp4,c,-2\n", r"line 2, column 'fps': expected a positive number"),
    ("video,prompt,raft,flow\na.mp4,c,f1,f2\n", r"columns 'raft' and 'flow' both mean 'flow'"),
    ("video,prompt\na.mp4,c,surplus\n", r"line 2: more cells than header columns"),
    ("", r"empty file"),
])
def test_manifest_errors_are_clear(tmp_path, text, pattern):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ManifestError, match=pattern):
        read_manifest(path)


def test_manifest_jsonl_errors_and_unknown_columns(tmp_path, caplog):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"video": "a.mp4", "prompt": "c"}\n{"video": "b.mp4", "prompt": \n')
    with pytest.raises(ManifestError, match=r"bad.jsonl line 2: not valid JSON"):
        read_manifest(path)
    path.write_text('{"video": "a.mp4", "prompt": "c"}\n{"prompt": "c"}\n')
    with pytest.raises(ManifestError, match=r"bad.jsonl line 2: missing required column 'video'"):
        read_manifest(path)
    with pytest.raises(ManifestError, match="manifest not found"):
        read_manifest(tmp_path / "nope.csv")
    csv_path = tmp_path / "extra.csv"
    csv_path.write_text("video,prompt,quality\na.mp4,c,0.9\nb.mp4,d,0.8\n")
    with caplog.at_level(logging.WARNING):
        records = read_manifest(csv_path)
    assert [r.extra for r in records] == [{"quality": "0.9"}, {"quality": "0.8"}]
    warnings = [r for r in caplog.records if "quality" in r.getMessage()]
    assert len(warnings) == 1 and "extra.csv" in warnings[0].getMessage()


# ----------------------------------------------------------------------------- raw npz

def test_raw_npz_round_trip(tmp_path):
    clip = {"depth": np.random.rand(2, 4, 5).astype(np.float32), "segmentation": np.ones((2, 4, 5), np.uint8),
            "caption": "a ball", "meta": {"seed": np.int64(3), "fps": 16.0, "trace": np.arange(3)},
            "instances": [{"id": 1, "kind": "sphere"}], "person_ids": []}
    loaded = load_raw(save_raw(tmp_path / "raw.npz", clip))
    assert np.array_equal(loaded["depth"], clip["depth"]) and loaded["segmentation"].dtype == np.uint8
    assert loaded["caption"] == "a ball"
    assert loaded["meta"] == {"seed": 3, "fps": 16.0, "trace": [0, 1, 2]}
    assert loaded["instances"] == clip["instances"] and loaded["person_ids"] == []
    arrays = {"depth": clip["depth"]}
    loaded = load_raw(save_raw(tmp_path / "raw2.npz", arrays, meta={"caption": "x", "near": 1.5}))
    assert loaded["meta"] == {"caption": "x", "near": 1.5} and set(loaded) == {"depth", "meta"}
    (tmp_path / "bad.npz").write_bytes(b"junk")
    with pytest.raises(RawReadError, match="bad.npz"):
        load_raw(tmp_path / "bad.npz")


# ----------------------------------------------------------------------------- dataset

T, SRC_H, SRC_W = 12, 96, 128


def boundary(t, width):
    """Column where the left region ends in frame t (moves right with t)."""
    return round(0.3 * width) + round(0.04 * width) * t


def make_indexed_raw(n_frames=T, height=SRC_H, width=SRC_W):
    """Raw ground truth whose every stream encodes the frame index t left of a moving edge."""
    cols = np.arange(width)[None, None, :]
    left = np.broadcast_to(cols < np.array([boundary(t, width) for t in range(n_frames)])[:, None, None],
                           (n_frames, height, width))
    t = np.arange(n_frames, dtype=np.float32)[:, None, None]
    rgb = np.zeros((n_frames, height, width, 3), np.uint8)
    rgb[..., 0] = np.where(left, 20 * t, 255).astype(np.uint8)
    depth = np.where(left, 16.0 / (t + 1), np.inf).astype(np.float32)
    flow = np.zeros((n_frames, height, width, 2), np.float32)
    flow[..., 0] = np.where(left, t - 6, 0)
    segmentation = np.where(left, t + 1, 0).astype(np.uint8)
    densepose = np.zeros((n_frames, height, width, 3), np.float32)
    densepose[..., 0] = np.where(left, t + 1, 0)
    densepose[..., 1:] = np.where(left, 0.5, 0)[..., None]
    skeleton = np.zeros((n_frames, 1, 17, 3), np.float32)
    skeleton[:, 0, 0] = np.stack([[boundary(i, width), height // 2, 2] for i in range(n_frames)])  # the nose marks the edge
    return {"rgb": rgb, "depth": depth, "flow": flow, "segmentation": segmentation, "skeleton": skeleton,
            "densepose": densepose, "caption": "an indexed clip", "meta": {"seed": 0}}


def write_clip(root: Path, clip_id: str, raw: dict, rgb_lossless=True) -> ClipRecord:
    folder = root / "clips" / clip_id
    n_frames, height, width = raw["segmentation"].shape
    write_video(folder / "rgb.mp4", raw["rgb"], lossless=rgb_lossless)
    paths = {}
    for name in MODALITY_NAMES:
        frames = get_modality(name).encode(raw[name], near=1.0, size=(height, width))
        paths[name] = write_video(folder / f"{name}.mkv", frames)
    save_raw(folder / "raw.npz", raw)
    return ClipRecord(clip_id=clip_id, rgb=folder / "rgb.mp4", caption=raw["caption"], modalities=paths,
                      raw=folder / "raw.npz", frames=n_frames, height=height, width=width, depth_near=1.0)


def left_value(values, column_of_edge):
    return np.median(values[:, : max(1, column_of_edge - 3)])


def decode_sample(sample):
    frames = {name: tensor_to_frames(video) for name, video in sample["modalities"].items()}
    decoded = {name: get_modality(name).decode(f, **sample["hints"]) for name, f in frames.items()}
    decoded["rgb"] = tensor_to_frames(sample["rgb"])
    return decoded


def test_dataset_streams_stay_aligned(tmp_path):
    record = write_clip(tmp_path, "indexed", make_indexed_raw())
    manifest = write_manifest(tmp_path / "manifest.csv", [record])
    dataset = UnityVideoDataset(manifest, frames=4, size=(64, 64), frame_stride=2, random_offset=True,
                                random_crop=True, seed=1, with_raw=True)
    starts = set()
    for epoch in range(4):
        dataset.set_epoch(epoch)
        sample = dataset[0]
        assert sample["rgb"].shape == (3, 4, 64, 64) and sample["rgb"].dtype == torch.float32
        assert float(sample["rgb"].min()) >= -1 and float(sample["rgb"].max()) <= 1
        assert sample["raw"] is None  # a resize was needed
        indices = sample["frame_indices"].numpy()
        starts.add(int(indices[0]))
        assert np.array_equal(np.diff(indices), [2, 2, 2])
        scale = sample["hints"]["max_flow"] / default_max_flow(SRC_H, SRC_W)
        assert scale == pytest.approx(64 / SRC_H)
        d = decode_sample(sample)
        for k, t in enumerate(indices):
            nose_x = d["skeleton"][k, 0, 0, 0]
            edge = int(np.ceil(nose_x))  # every stream's edge must sit at the nose
            assert round(left_value(d["segmentation"][k], edge)) == t + 1
            assert round(left_value(d["densepose"][k, ..., 0], edge)) == t + 1
            assert round(16.0 / left_value(d["depth"][k], edge)) == t + 1
            assert round(left_value(d["flow"][k, ..., 0], edge) / scale) + 6 == t
            assert round(left_value(d["rgb"][k, ..., 0].astype(float), edge) / 20) == t
            for stream, is_left in [("segmentation", d["segmentation"][k] > 0),
                                    ("densepose", d["densepose"][k, ..., 0] > 0),
                                    ("depth", np.isfinite(d["depth"][k])),
                                    ("rgb", d["rgb"][k, ..., 0] < 250)]:
                stream_edge = is_left[16].sum()  # row 16: number of left columns
                assert abs(stream_edge - nose_x - 0.5) <= 1.0, (stream, stream_edge, nose_x)
    assert len(starts) > 1  # the random offset moves


def test_dataset_raw_follows_frames_and_crop(tmp_path):
    raw = make_indexed_raw()
    record = write_clip(tmp_path, "indexed", raw)
    dataset = UnityVideoDataset([record], frames=3, size=(SRC_H, 100), frame_stride=3, random_offset=True,
                                random_crop=True, seed=5, with_raw=True)
    sample = dataset[0]
    indices = sample["frame_indices"].numpy()
    got = sample["raw"]
    assert got is not None and got["caption"] == raw["caption"]
    d = decode_sample(sample)
    assert np.array_equal(d["segmentation"], got["segmentation"])
    assert np.array_equal(d["densepose"][..., 0], got["densepose"][..., 0])
    offset = raw["skeleton"][indices, 0, 0, 0] - got["skeleton"][:, 0, 0, 0]
    assert len(set(offset.tolist())) == 1  # one crop for all frames
    visible = got["skeleton"][:, 0, 0, 2] > 0
    assert np.abs(d["skeleton"][visible, 0, 0, :2] - got["skeleton"][visible, 0, 0, :2]).max() <= 1.0
    assert np.array_equal(got["rgb"], d["rgb"])
    assert np.array_equal(got["segmentation"], raw["segmentation"][indices][:, :, int(offset[0]):int(offset[0]) + 100])


def test_dataset_skips_bad_clips_and_reports(tmp_path, caplog):
    raw = make_indexed_raw(n_frames=6, height=24, width=40)
    records = [write_clip(tmp_path, f"clip{i}", raw) for i in range(5)]
    records[1].modalities["depth"].unlink()  # missing file
    records[2].modalities["flow"].write_bytes(b"\x1aE\xdf\xa3 truncated garbage" * 10)  # corrupt
    short = get_modality("segmentation").encode(raw["segmentation"][:5])
    write_video(records[3].modalities["segmentation"], short)  # frame-count mismatch
    manifest = write_manifest(tmp_path / "manifest.jsonl", records)
    dataset = UnityVideoDataset(manifest, frames=4)
    with caplog.at_level(logging.INFO, logger="unityvideo.data.dataset"):  # the train CLI quiets this one
        returned = [dataset[i]["index"] for i in range(len(dataset))]
    assert returned == [0, 4, 4, 4, 4]  # a bad clip yields the next valid one
    assert dataset.skipped == {"missing_file": 1, "corrupt_video": 2, "frame_mismatch": 3}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # each bad clip is logged once, with its reason and file
    assert any("missing_file" in w and "depth.mkv" in w for w in warnings)
    assert any("corrupt_video" in w and "flow.mkv" in w for w in warnings)
    assert any("frame_mismatch" in w and "5 frames" in w for w in warnings)
    summary = [r.getMessage() for r in caplog.records if "epoch 0 done" in r.getMessage()]
    assert len(summary) == 1 and "frame_mismatch=3" in summary[0]
    assert "6 skips" in dataset.report()
    # Too short for the request, and a DataLoader batch via collate_clips.
    too_long = UnityVideoDataset([records[0], records[4]], frames=4, frame_stride=2, with_raw=True)
    with pytest.raises(RuntimeError, match="every clip is unusable"):
        too_long[0]
    assert too_long.skipped == {"too_short": 2}
    loader = DataLoader(UnityVideoDataset([records[0], records[4]], frames=4, with_raw=True), batch_size=2,
                        collate_fn=collate_clips)
    batch = next(iter(loader))
    assert batch["rgb"].shape == (2, 3, 4, 24, 40) and set(batch["modalities"]) == set(MODALITY_NAMES)
    assert batch["clip_id"] == ["clip0", "clip4"] and len(batch["raw"]) == 2


def test_dataset_missing_modality_and_truncated_file(tmp_path):
    raw = make_indexed_raw(n_frames=8, height=24, width=40)
    good = write_clip(tmp_path, "good", raw)
    lacking = write_clip(tmp_path, "lacking", raw)
    del lacking.modalities["skeleton"]
    truncated = write_clip(tmp_path, "truncated", raw)
    data = truncated.modalities["depth"].read_bytes()
    truncated.modalities["depth"].write_bytes(data[: len(data) // 2])
    dataset = UnityVideoDataset([lacking, truncated, good], frames=8, modalities=["depth", "pose"])
    assert dataset.modalities == ("depth", "skeleton")
    assert dataset[0]["clip_id"] == "good"
    assert dataset.skipped["missing_modality"] == 1
    assert dataset.skipped["frame_mismatch"] + dataset.skipped["corrupt_video"] == 1
