"""Round trips of every modality encoding on synthetic raw ground truth, the registry, and
decoding of imperfect (noisy / random) frames."""
import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from unityvideo.modalities import (DENSEPOSE_UV_SPAN, COCO_LIMBS, MODALITIES, MODALITY_NAMES, SEGMENTATION_PALETTE,
                                   SKELETON_CODES, SKELETON_JOINT_COLOURS, STAGE1_MODALITIES,
                                   canonical_name, default_max_flow, depth_near, get_modality)

F, H, W = 4, 64, 64


def smooth_field(rng, shape, sigma=6.0):
    """Random smooth values in [0, 1] per frame."""
    field = gaussian_filter(rng.standard_normal(shape), sigma=(0, sigma, sigma))
    return (field - field.min()) / (field.max() - field.min())


def make_depth(rng):
    depth = (2.0 + 8.0 * smooth_field(rng, (F, H, W))).astype(np.float32)
    depth[:, :12] = np.inf  # sky
    return depth


def make_flow(rng, max_flow):
    return np.stack([(smooth_field(rng, (F, H, W)) * 2 - 1) * max_flow for _ in range(2)], -1).astype(np.float32)


def make_skeleton(rng, n_frames, persons, height, width, spacing):
    """Persons in separate vertical bands; joints at least `spacing` px apart (discs never touch)."""
    skeleton = np.zeros((n_frames, persons, 17, 3), np.float32)
    band = width / persons
    for f in range(n_frames):
        for p in range(persons):
            points = []
            while len(points) < 17:
                x = rng.uniform(p * band + spacing, (p + 1) * band - spacing)
                y = rng.uniform(spacing, height - spacing)
                if all(np.hypot(x - a, y - b) >= spacing for a, b in points):
                    points.append((x, y))
            skeleton[f, p, :, :2] = points
            skeleton[f, p, :, 2] = 2
    return skeleton


# ----------------------------------------------------------------------------- registry

def test_registry_names_prompts_and_flags():
    assert MODALITY_NAMES == ("depth", "flow", "segmentation", "skeleton", "densepose")
    assert set(MODALITIES) == {"rgb", *MODALITY_NAMES}
    assert STAGE1_MODALITIES == ("depth", "flow", "densepose")
    prompts = {name: m.prompt for name, m in MODALITIES.items()}
    assert prompts["depth"] == "depth map" and prompts["flow"] == "optical flow"
    assert prompts["segmentation"] == "instance segmentation mask"
    assert prompts["skeleton"] == "human skeleton" and prompts["densepose"] == "densepose"
    assert "rgb" in prompts["rgb"]
    assert len(set(prompts.values())) == len(prompts)


@pytest.mark.parametrize("alias,name", [("raft", "flow"), ("optical_flow", "flow"), ("disparity", "depth"),
                                        ("seg", "segmentation"), ("mask", "segmentation"), ("pose", "skeleton"),
                                        ("keypoints", "skeleton"), ("iuv", "densepose"), ("video", "rgb"),
                                        (" RAFT ", "flow"), ("Depth", "depth")])
def test_aliases_resolve(alias, name):
    assert get_modality(alias).name == name
    assert canonical_name(alias) == name


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        get_modality("normals")
    message = str(info.value)
    assert "normals" in message
    for name in ("rgb", *MODALITY_NAMES, "raft", "iuv", "pose"):
        assert name in message


def test_palettes_are_distinct():
    assert len({tuple(c) for c in SEGMENTATION_PALETTE}) == 64
    assert tuple(SEGMENTATION_PALETTE[0]) == (0, 0, 0)


def test_skeleton_joint_codes_are_apart_and_read_back_from_their_colours():
    from unityvideo.skeleton_picture import SIDE_WEIGHT, colour_codes
    assert len(SKELETON_CODES) == 17 and len({tuple(c) for c in SKELETON_JOINT_COLOURS}) == 17
    gap = SKELETON_CODES[:, None] - SKELETON_CODES[None]
    distance = np.hypot(gap[..., 0], SIDE_WEIGHT * gap[..., 1])
    assert distance[~np.eye(17, dtype=bool)].min() >= 0.15
    assert np.abs(colour_codes(SKELETON_JOINT_COLOURS) - SKELETON_CODES).max() < 0.01
    # the code is a ratio of channels: a dimmed colour means the same joint
    dimmed = np.rint(SKELETON_JOINT_COLOURS * 0.4).astype(np.uint8)
    assert np.abs(colour_codes(dimmed) - SKELETON_CODES).max() < 0.03


# ----------------------------------------------------------------------------- round trips

def test_rgb_identity():
    frames = np.random.default_rng(0).integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    m = get_modality("rgb")
    assert np.array_equal(m.decode(m.encode(frames)), frames)


def test_depth_round_trip():
    rng = np.random.default_rng(1)
    depth = make_depth(rng)
    m = get_modality("depth")
    near = depth_near(depth)
    assert near == pytest.approx(float(depth[np.isfinite(depth)].min()))
    assert m.default_hints(depth) == {"near": near}
    frames = m.encode(depth, near=near)
    assert frames.dtype == np.uint8 and frames.shape == (F, H, W, 3)
    assert (frames[:, :12] == 0).all()
    decoded = m.decode(frames, near=near)
    finite = np.isfinite(depth)
    assert np.isinf(decoded[~finite]).all() and np.isfinite(decoded[finite]).all()
    abs_rel = np.mean(np.abs(decoded[finite] - depth[finite]) / depth[finite])
    assert abs_rel < 0.01
    assert np.max(np.abs(decoded[finite] - depth[finite]) / depth[finite]) < 0.01


def test_depth_uses_three_times_one_byte():
    # Channel offsets make the channel sum round(765 s): 765 distinct levels, not 256.
    disparity = np.linspace(0.05, 1.0, 5000)
    frames = get_modality("depth").encode((1.0 / disparity).reshape(1, 50, 100), near=1.0)
    assert len(np.unique(frames.astype(int).sum(-1))) > 700


def test_flow_round_trip():
    rng = np.random.default_rng(2)
    max_flow = default_max_flow(H, W)
    assert max_flow == 8.0
    flow = make_flow(rng, max_flow)
    m = get_modality("raft")
    frames = m.encode(flow)
    assert (frames[..., 2] == 128).all()
    decoded = m.decode(frames)
    epe = np.linalg.norm(decoded - flow, axis=-1)
    assert epe.mean() < 0.1 and epe.max() < 0.1
    # An explicit max_flow hint is honoured; larger flows saturate.
    decoded = m.decode(m.encode(flow * 3, max_flow=2.0), max_flow=2.0)
    assert np.abs(decoded).max() <= 2.0 + 1e-6


def test_segmentation_round_trip():
    rng = np.random.default_rng(3)
    ids = rng.integers(0, 64, (F, H, W)).astype(np.uint8)
    m = get_modality("seg")
    assert np.array_equal(m.decode(m.encode(ids)), ids)
    with pytest.raises(ValueError, match="0..63"):
        m.encode(np.full((1, 2, 2), 64))


@pytest.mark.parametrize("size,spacing", [((64, 64), 4.0), ((256, 192), 12.0), ((33, 47), 3.5)])
def test_skeleton_round_trip(size, spacing):
    rng = np.random.default_rng(4)
    height, width = size
    skeleton = make_skeleton(rng, 3, 2, height, width, spacing)
    m = get_modality("skeleton")
    frames = m.encode(skeleton, size=size)
    assert frames.shape == (3, height, width, 3)
    decoded = m.decode(frames)
    assert decoded.shape == skeleton.shape
    assert (decoded[..., 2] == 2).all()
    error = np.abs(decoded[..., :2] - skeleton[..., :2])
    assert error.max() <= 1.0


def test_skeleton_visibility_and_person_order():
    rng = np.random.default_rng(5)
    skeleton = make_skeleton(rng, 2, 2, 64, 64, 4.0)[:, ::-1].copy()  # right-hand person first
    skeleton[0, 0, 3, 2] = 0  # outside the frame: not drawn, decoded as missing
    skeleton[0, 1, 5, 2] = 1  # occluded: drawn, decoded as visible
    decoded = get_modality("skeleton").decode(get_modality("skeleton").encode(skeleton, size=(64, 64)))
    expected = skeleton[:, ::-1]  # persons come back sorted by x
    assert decoded[0, 1, 3].tolist() == [0.0, 0.0, 0.0]
    assert decoded[0, 0, 5, 2] == 2
    visible = expected[..., 2] > 0
    assert np.abs(decoded[..., :2] - expected[..., :2])[visible].max() <= 1.0
    # The persons hint pads or truncates.
    assert get_modality("pose").decode(np.zeros((2, 64, 64, 3), np.uint8), persons=3).shape == (2, 3, 17, 3)


STANDING = np.array([[20, 10], [17, 7], [23, 7], [13, 9], [27, 9], [10, 25], [30, 25], [6, 42], [34, 42],
                     [4, 58], [36, 58], [13, 60], [27, 60], [12, 80], [28, 80], [11, 98], [29, 98]], float)


def standing_people(rng, n_frames, scale=0.25):
    """Two standing people side by side in a 64 x 64 frame, about 25 px tall."""
    skeleton = np.zeros((n_frames, 2, 17, 3), np.float32)
    for f in range(n_frames):
        for p in range(2):
            skeleton[f, p, :, :2] = STANDING * scale * rng.uniform(0.9, 1.3) + [4 + 30 * p + rng.uniform(0, 6),
                                                                              6 + rng.uniform(0, 20)]
    skeleton[..., 2] = 2
    return skeleton


def test_the_skeleton_code_survives_noise_dimming_and_blur():
    """What a regression gets wrong: a few levels per pixel, a dimmer line, a pixel of blur."""
    pose = get_modality("skeleton")
    skeleton = standing_people(np.random.default_rng(8), 8)
    picture = pose.encode(skeleton, size=(64, 64))

    def within(frames, pixels):
        error = np.linalg.norm(pose.decode(frames, persons=2)[..., :2] - skeleton[..., :2], axis=-1)
        return (error <= pixels).mean()

    assert within(picture, 1.0) == 1.0
    assert within(noisy(picture, np.random.default_rng(9), 10.0), 2.0) >= 0.95
    assert within(np.rint(picture * 0.4).astype(np.uint8), 1.0) == 1.0
    blurred = gaussian_filter(picture.astype(np.float32), sigma=(0, 1, 1, 0))
    assert within(np.rint(blurred).astype(np.uint8), 2.0) >= 0.8


def test_touching_skeletons_stay_apart():
    standing = np.array([[20, 10], [17, 7], [23, 7], [13, 9], [27, 9], [10, 25], [30, 25], [6, 42], [34, 42],
                         [4, 58], [36, 58], [13, 60], [27, 60], [12, 80], [28, 80], [11, 98], [29, 98]], float)
    skeleton = np.zeros((1, 2, 17, 3), np.float32)
    skeleton[0, 0, :, :2] = standing + [20, 10]
    skeleton[0, 1, :, :2] = standing + [62, 12]
    skeleton[0, 1, 9, :2] = [45, 50]  # the right person's wrist reaches into the left one's drawing
    skeleton[..., 2] = 2
    m = get_modality("skeleton")
    frames = m.encode(skeleton, size=(128, 128))
    from scipy import ndimage
    assert ndimage.label(frames[0].max(-1) > 0, structure=np.ones((3, 3)))[1] == 1  # one blob of pixels
    decoded = m.decode(frames)
    assert decoded.shape == (1, 2, 17, 3)
    assert np.abs(decoded[..., :2] - skeleton[..., :2]).max() <= 1.0


def test_skeleton_needs_size():
    with pytest.raises(ValueError, match="size"):
        get_modality("skeleton").encode(np.zeros((1, 1, 17, 3)))


def test_densepose_round_trip():
    rng = np.random.default_rng(6)
    part = rng.integers(0, 25, (F, H, W)).astype(np.float32)
    uv = rng.uniform(0, 1, (F, H, W, 2)).astype(np.float32) * (part > 0)[..., None]
    iuv = np.concatenate([part[..., None], uv], axis=-1)
    m = get_modality("iuv")
    decoded = m.decode(m.encode(iuv))
    assert np.array_equal(decoded[..., 0], part)
    assert np.abs(decoded[..., 1:] - uv).max() <= 0.5 / DENSEPOSE_UV_SPAN + 1e-6  # U, V: 24 levels each


def test_densepose_part_survives_regression_error():
    """A model's output is off by some levels everywhere: the part and the body must still decode (the
    earlier R = 10 I code lost the part at 5 levels)."""
    rng = np.random.default_rng(16)
    part = rng.integers(0, 25, (F, H, W)).astype(np.float32)
    iuv = np.concatenate([part[..., None], rng.uniform(0, 1, (F, H, W, 2))], axis=-1)
    m = get_modality("densepose")
    frames = m.encode(iuv).astype(np.float32)
    off = frames + rng.choice([-16.0, 16.0], frames.shape) + np.array([0, 0, -100.0]) * (part > 0)[..., None]
    decoded = m.decode(np.clip(off, 0, 255).astype(np.uint8))
    assert np.array_equal(decoded[..., 0], part)


# ----------------------------------------------------------------------------- imperfect frames

def noisy(frames, rng, sigma=10.0):
    return np.clip(frames + rng.normal(0, sigma, frames.shape), 0, 255).astype(np.uint8)


def test_decoders_survive_random_frames():
    rng = np.random.default_rng(7)
    frames = rng.integers(0, 256, (2, 31, 45, 3), dtype=np.uint8)
    for name, m in MODALITIES.items():
        out = m.decode(frames)
        assert out.shape[0] == 2, name
        assert not np.isnan(out).any(), name
    assert get_modality("segmentation").decode(frames).max() < 64
    assert np.all((get_modality("densepose").decode(frames)[..., 0] >= 0))
    with pytest.raises(TypeError, match="uint8"):
        get_modality("depth").decode(frames.astype(np.float32))


def test_decoders_tolerate_noise():
    rng = np.random.default_rng(8)
    ids = rng.integers(0, 64, (F, H, W)).astype(np.uint8)
    seg = get_modality("segmentation")
    assert np.mean(seg.decode(noisy(seg.encode(ids), rng)) == ids) > 0.99
    depth = make_depth(rng)
    dm = get_modality("depth")
    near = depth_near(depth)
    decoded = dm.decode(noisy(dm.encode(depth, near=near), rng, 2.0), near=near)
    finite = np.isfinite(depth) & np.isfinite(decoded)
    assert np.median(np.abs(decoded[finite] - depth[finite]) / depth[finite]) < 0.05


def test_visualizations_are_pictures():
    rng = np.random.default_rng(9)
    raws = {"rgb": rng.integers(0, 256, (F, H, W, 3), dtype=np.uint8), "depth": make_depth(rng),
            "flow": make_flow(rng, 8.0), "segmentation": rng.integers(0, 5, (F, H, W)),
            "skeleton": make_skeleton(rng, F, 2, H, W, 4.0),
            "densepose": np.concatenate([rng.integers(0, 25, (F, H, W, 1)), rng.uniform(0, 1, (F, H, W, 2))], -1)}
    for name, raw in raws.items():
        picture = get_modality(name).visualize(raw, size=(H, W))
        assert picture.dtype == np.uint8 and picture.shape == (F, H, W, 3), name
    # Flow wheel: zero flow is white, the four directions get four different hues.
    wheel = get_modality("flow").visualize(np.array([[[[0, 0], [1, 0], [0, 1], [-1, 0], [0, -1]]]], np.float32))
    assert wheel[0, 0, 0].tolist() == [255, 255, 255]
    assert len({tuple(c) for c in wheel[0, 0, 1:]}) == 4
    # Depth: sky black, near brighter than far.
    depth_picture = get_modality("depth").visualize(raws["depth"])
    assert (depth_picture[:, :12] == 0).all()


# ----------------------------------------------------------------------------- test-time ensembles

def test_ensemble_of_one_is_the_sample():
    frames = np.random.default_rng(9).integers(0, 256, (F, H, W, 3), dtype=np.uint8)
    for name in MODALITY_NAMES:
        assert np.array_equal(get_modality(name).combine([frames]), frames)


def test_continuous_ensemble_is_the_per_pixel_median():
    rng = np.random.default_rng(10)
    flow = rng.uniform(-4, 4, (F, H, W, 2)).astype(np.float32)
    m = get_modality("flow")
    clean = m.encode(flow)
    samples = [noisy(clean, rng, 3.0) for _ in range(4)] + [np.full_like(clean, 255)]  # one wild sample
    combined = m.combine(samples)
    assert np.array_equal(combined, np.rint(np.median(np.stack(samples).astype(np.float32), 0)).astype(np.uint8))
    single = np.abs(m.decode(samples[0]) - flow).mean()
    assert np.abs(m.decode(combined) - flow).mean() < single


def test_segmentation_ensemble_is_the_most_typical_sample_not_a_vote():
    rng = np.random.default_rng(11)
    ids = np.zeros((F, H, W), np.uint8)
    ids[:, 10:30, 10:30], ids[:, 40:60, 20:50] = 1, 2
    seg = get_modality("segmentation")
    relabelled = np.where(ids > 0, 3 - ids, 0).astype(np.uint8)  # the same objects, colours swapped
    grown = ids.copy()
    grown[:, 8:10, 10:30] = 1
    samples = [seg.encode(ids), seg.encode(relabelled), seg.encode(grown)]
    assert np.array_equal(seg.combine(samples), samples[0])  # a valid sample, instances intact
    empty = np.zeros_like(samples[0])
    assert np.array_equal(seg.combine([samples[0], empty, samples[2]]), samples[0])


def test_skeleton_ensemble_is_the_most_typical_drawing():
    rng = np.random.default_rng(12)
    pose = get_modality("skeleton")
    drawn = pose.encode(make_skeleton(rng, 2, 1, H, W, 4.0), size=(H, W))
    shifted = np.roll(drawn, 1, axis=2)  # a pixel-vote of these would erase thin limbs
    stray = drawn.copy()
    stray[:, :4, :4] = 255  # a hallucinated blob
    assert np.array_equal(pose.combine([shifted, stray, drawn]), drawn)


def test_densepose_ensemble_votes_parts_and_averages_agreeing_uv():
    part = np.zeros((1, 2, 2), np.float32)
    part[0, 0, 0] = 3
    iuv = lambda u: np.concatenate([part[..., None], np.full((1, 2, 2, 2), u, np.float32) * (part > 0)[..., None]], -1)
    m = get_modality("densepose")
    other = iuv(0.9)
    other[0, 0, 0, 0] = 7  # a sample that disagrees on the part
    combined = m.decode(m.combine([m.encode(iuv(0.2)), m.encode(iuv(0.4)), m.encode(other)]))
    assert combined[0, 0, 0, 0] == 3 and np.all(combined[0, 1:, :, 0] == 0)
    assert abs(combined[0, 0, 0, 1] - 0.3) <= 1 / DENSEPOSE_UV_SPAN  # (two roundings) the mean UV of the two samples that said part 3


def test_densepose_ensemble_keeps_a_body_its_samples_split_between_parts():
    m = get_modality("densepose")
    samples = []
    for first, second in ((3, 4), (4, 0), (0, 3)):  # each pixel: body in 2 of 3 samples, never the same part
        iuv = np.zeros((1, 1, 2, 3), np.float32)
        iuv[0, 0, :, 0] = (first, second)
        samples.append(m.encode(iuv))
    combined = m.decode(m.combine(samples))[..., 0]
    assert combined.tolist() == [[[3, 3]]]  # body by majority; the part tie goes to the lower part
    split = []
    for part in (3, 4, 5, 0, 0):  # body in 3 of 5, but background outnumbers every single part
        iuv = np.zeros((1, 1, 1, 3), np.float32)
        iuv[..., 0] = part
        split.append(m.encode(iuv))
    assert m.decode(m.combine(split))[..., 0].item() == 3
    lone = np.zeros((1, 1, 2, 3), np.float32)
    lone[0, 0, 0, 0] = 5
    background = m.encode(np.zeros_like(lone))
    assert np.all(m.decode(m.combine([m.encode(lone), background]))[..., 0] == 0)  # a tie is background


def test_skeleton_decoder_reads_any_picture():
    """A model's picture need not be a drawing. Here one connected stroke holds three nose discs and
    one ankle disc (the most common count, 2, is no joint's), and random speckle decodes too."""
    from unityvideo.skeleton_picture import SKELETON_JOINT_COLOURS
    pose = get_modality("skeleton")
    frames = np.zeros((1, 32, 32, 3), np.uint8)
    frames[0, 16, 2:30] = 128  # grey: near no joint's code
    for x in (4, 12, 20):
        frames[0, 15:18, x - 1:x + 2] = SKELETON_JOINT_COLOURS[0]
    frames[0, 15:18, 26:29] = SKELETON_JOINT_COLOURS[15]
    decoded = pose.decode(frames)
    assert decoded.shape[2:] == (17, 3) and (decoded[..., 2] > 0).any()
    rng = np.random.default_rng(13)
    for _ in range(20):
        frames = (rng.random((2, 32, 32, 3)) * 255 * (rng.random((2, 32, 32, 1)) < 0.3)).astype(np.uint8)
        assert pose.decode(frames).shape[2:] == (17, 3)
