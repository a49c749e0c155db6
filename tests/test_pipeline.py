"""UnityVideoPipeline and `unityvideo generate`: every task from a checkpoint folder, seeds, batched CFG,
flow-matching sanity with an oracle velocity, condition streams, and the CLI's errors and files."""

import json
import shutil

import numpy as np
import pytest
import torch
from diffusers.utils.torch_utils import randn_tensor

from unityvideo import cli, pipeline_cli
from unityvideo.data import load_raw, probe_video, read_video, write_video
from unityvideo.modalities import ENCODING_VERSIONS, get_modality
from unityvideo.models import LatentNorm, Stream, UnityVideoTransformer
from unityvideo.models.checkpoint import CheckpointSpec, load_checkpoint_spec
from unityvideo.pipeline import UnityVideoPipeline, make_scheduler

F, H, W = 4, 32, 32  # latent (48, 4, 8, 8) with the pixel4 codec: 64 tokens per stream
LEARNED = ["depth", "flow", "segmentation"]
ALL_TASKS = ["t2v", "joint", "control", "estimate"]


def save_checkpoint(folder, tasks=ALL_TASKS, estimate_mode="generative"):
    torch.manual_seed(0)
    model = UnityVideoTransformer.from_preset("tiny", num_layers=1)
    with torch.no_grad():  # non-zero AdaLN table so streams differ even before training
        model.modality_table.normal_(0, 0.5)
    model.save_pretrained(folder / "transformer")
    CheckpointSpec(modalities=LEARNED, tasks=list(tasks), frames=F, size=(H, W), fps=8, shift=3.0,
                   estimate_mode=estimate_mode).save(folder)
    return folder


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def pipe(checkpoint):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture()
def calls(pipe, monkeypatch):
    """Record every transformer forward: the streams it got."""
    return record_forwards(pipe, monkeypatch)


def record_forwards(pipe, monkeypatch) -> list:
    seen = []
    forward = pipe.transformer.forward

    def recording(streams):
        seen.append(streams)
        return forward(streams)

    monkeypatch.setattr(pipe.transformer, "forward", recording)
    return seen


def video(seed, frames=F, height=H, width=W):
    return np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)


def gen(seed):
    return torch.Generator().manual_seed(seed)


REQUESTS = {
    "t2v": dict(prompt=["a red ball rolls", "a person walks"]),
    "joint": dict(prompt=["a red ball rolls", "a person walks"], modalities=["depth", "flow"]),
    "control": dict(prompt="a person walks", conditions={"depth": video(1), "segmentation": video(2)}),
    "estimate": dict(video=video(3), modalities=["depth"]),
}


# ----- every task end to end ------------------------------------------------------------------------


@pytest.mark.parametrize("task", ALL_TASKS)
def test_every_task_runs_from_the_folder(pipe, task):
    out = pipe(task=task, num_inference_steps=2, generator=gen(0), **REQUESTS[task])
    batch = 2 if task in ("t2v", "joint") else 1
    targets = {"t2v": ["rgb"], "joint": ["rgb", "depth", "flow"], "control": ["rgb"], "estimate": ["depth"]}[task]
    assert list(out.frames) == targets
    for frames in out.frames.values():
        assert frames.shape == (batch, F, H, W, 3) and frames.dtype == np.uint8
    for name in targets[1:] if task == "joint" else targets if task == "estimate" else []:
        assert len(out.raw[name]) == batch
    if task == "joint":
        assert out.raw["depth"][0].shape == (F, H, W) and out.raw["flow"][0].shape == (F, H, W, 2)
        assert out.hints["flow"]["max_flow"] == max(H, W) / 8 and out.hints["depth"]["near"] == 1.0
    if task == "estimate":
        assert out.raw["depth"][0].dtype == np.float32
    assert list(out.latents)[0] == "rgb"  # rgb first in the stream order
    assert all(v.shape == (batch, 48, F, H // 4, W // 4) for v in out.latents.values())


def test_same_seed_same_video_other_seed_other_video(pipe):
    run = lambda seed: pipe("a ball", task="joint", modalities=["depth"], num_inference_steps=2,
                            generator=gen(seed)).frames
    a, b, c = run(5), run(5), run(6)
    for name in a:
        assert np.array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name])


def test_a_generator_per_sample_reproduces_single_samples(pipe):
    both = pipe(["a ball", "a box"], num_inference_steps=2, generator=[gen(1), gen(2)], output_type="latent")
    second = pipe("a box", num_inference_steps=2, generator=gen(2), output_type="latent")
    assert torch.allclose(both.latents["rgb"][1], second.latents["rgb"][0], atol=1e-5)


# ----- classifier-free guidance -------------------------------------------------------------------


@pytest.mark.parametrize("task", ["joint", "control", "estimate"])
def test_batched_cfg_equals_separate_passes(pipe, task):
    kwargs = dict(task=task, num_inference_steps=3, guidance_scale=3.0, output_type="latent", **REQUESTS[task])
    if task != "joint":
        kwargs["modality_guidance_scale"] = 2.0
    batched = pipe(generator=gen(0), batch_cfg=True, **kwargs).latents
    separate = pipe(generator=gen(0), batch_cfg=False, **kwargs).latents
    for name in batched:
        assert (batched[name] - separate[name]).abs().max() <= 1e-5


def test_cfg_is_uncond_plus_scale_times_difference(pipe):
    """One Euler step from t = 1 to 0: x_0 = eps - v, with v = v_u + g (v_c - v_u) from two plain forwards."""
    prompts, g = ["a red ball", "a person"], 4.0
    out = pipe(prompts, num_inference_steps=1, guidance_scale=g, generator=gen(3), output_type="latent")
    eps = randn_tensor((2, 1, 48, F, H // 4, W // 4), generator=gen(3))[:, 0]
    features, mask = pipe.text_encoder.encode(prompts + ["", ""])
    with torch.no_grad():
        v_c, v_u = (pipe.transformer([Stream("rgb", eps, torch.ones(2), features[s], mask[s])])[0]
                    for s in (slice(0, 2), slice(2, 4)))
    assert (out.latents["rgb"] - (eps - (v_u + g * (v_c - v_u)))).abs().max() <= 1e-5


def test_guidance_one_skips_the_unconditional_pass(pipe, calls):
    pipe("a ball", num_inference_steps=3, guidance_scale=1.0, output_type="latent")
    assert [s[0].latent.shape[0] for s in calls] == [1, 1, 1]
    calls.clear()
    pipe("a ball", num_inference_steps=3, guidance_scale=5.0, output_type="latent")
    assert [s[0].latent.shape[0] for s in calls] == [2, 2, 2]  # cond + uncond in one forward
    calls.clear()
    pipe("a ball", num_inference_steps=3, guidance_scale=5.0, output_type="latent", batch_cfg=False)
    assert len(calls) == 6
    calls.clear()
    pipe(task="control", conditions={"depth": video(1)}, num_inference_steps=2, guidance_scale=2.0,
         modality_guidance_scale=3.0, output_type="latent")
    assert [s[0].latent.shape[0] for s in calls] == [3, 3]  # cond, no caption, condition as noise
    t_depth = calls[0][1].timestep
    assert t_depth.tolist() == [0.0, 0.0, 1.0]


def test_modality_guidance_needs_a_condition_stream(pipe):
    with pytest.raises(ValueError, match="modality_guidance_scale"):
        pipe("a ball", task="t2v", modality_guidance_scale=2.0)


# ----- flow matching sanity ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["euler", "unipc"])
def test_oracle_velocity_recovers_x0(pipe, monkeypatch, scheduler):
    """A fake model returning eps - x_0 (computed from x_t and t) must land exactly on x_0, and every
    sample it is shown must lie on the straight path (1 - t) x_0 + t eps with one eps."""
    shape = (1, 48, F, H // 4, W // 4)
    x0 = {"rgb": torch.randn(shape, generator=gen(10)), "depth": torch.randn(shape, generator=gen(11))}
    eps_seen = {name: [] for name in x0}

    def oracle(streams):
        out = []
        for s in streams:
            t = torch.as_tensor(s.timestep).view(-1, 1, 1, 1, 1)
            eps = (s.latent - (1 - t) * x0[s.modality]) / t
            eps_seen[s.modality].append(eps)
            out.append(eps - x0[s.modality])
        return out

    monkeypatch.setattr(pipe.transformer, "forward", oracle)
    monkeypatch.setattr(pipe, "scheduler", make_scheduler(scheduler, 3.0))
    result = pipe("a ball", task="joint", modalities=["depth"], num_inference_steps=6, guidance_scale=1.0,
                  generator=gen(0), output_type="latent")
    noise = randn_tensor((1, 2, *shape[1:]), generator=gen(0))
    for k, name in enumerate(x0):
        assert (result.latents[name] - x0[name]).abs().max() <= 1e-4
        for eps in eps_seen[name]:
            assert (eps - noise[:, k]).abs().max() <= 1e-3


def test_condition_latent_is_clean_and_unchanged(pipe, calls):
    depth = video(4)
    out = pipe("a person", task="control", conditions={"depth": depth}, num_inference_steps=3,
               guidance_scale=2.0, generator=gen(0))
    expected = pipe.codec.encode(torch.from_numpy(depth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    assert torch.equal(out.latents["depth"], expected)
    for streams in calls:
        assert [s.modality for s in streams] == ["rgb", "depth"]
        assert torch.equal(streams[1].latent[:1], expected) and torch.all(streams[1].timestep == 0)


def test_latent_norm_maps_conditions_in_and_outputs_out(pipe, calls, monkeypatch):
    norm = LatentNorm({"depth": (-0.5, 0.25), "rgb": (0.1, 2.0)})
    monkeypatch.setattr(pipe, "latent_norm", norm)
    depth = video(4)
    out = pipe("a person", task="control", conditions={"depth": depth}, num_inference_steps=2,
               guidance_scale=1.0, generator=gen(0))
    encoded = pipe.codec.encode(torch.from_numpy(depth).permute(3, 0, 1, 2)[None].float() / 127.5 - 1)
    assert torch.allclose(calls[0][1].latent, (encoded + 0.5) / 0.25)
    rgb = pipe.codec.decode(out.latents["rgb"] * 2.0 + 0.1)  # what the frames must show
    expected = rgb.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()
    assert np.array_equal(out.frames["rgb"], expected)


def test_latent_norm_measures_and_inverts():
    latents = {"flow": [torch.randn(2, 12, 4, 4, 4) * 0.1 + 3.0, torch.randn(12, 4, 4, 4) * 0.1 + 3.0],
               "flat": [torch.zeros(3, 4)]}
    norm = LatentNorm.measure(latents)
    assert norm.stats["flow"][0] == pytest.approx(3.0, abs=0.02)
    assert norm.stats["flow"][1] == pytest.approx(0.1, rel=0.1)
    assert norm.stats["flat"] == (0.0, 1e-3)  # a constant stream is not divided by zero
    x = latents["flow"][0]
    assert torch.allclose(norm.denormalize(norm.normalize(x, "flow"), "flow"), x, atol=1e-6)
    assert norm.normalize(x, "depth") is x  # streams without stats pass through
    assert LatentNorm.from_json(norm.to_json()).stats["flow"] == pytest.approx(norm.stats["flow"], rel=1e-5)


# ----- the command line ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("inputs")
    depth = get_modality("depth").encode(np.random.default_rng(0).uniform(1, 5, (F + 2, H, W)).astype(np.float32))
    (folder / "broken.mkv").write_text("not a video")
    return {"rgb": write_video(folder / "rgb.mp4", video(0, F + 2), fps=8, lossless=False),
            "depth": write_video(folder / "depth.mkv", depth, fps=8, lossless=True),
            "broken": folder / "broken.mkv"}


@pytest.fixture()
def no_model(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the request was checked")

    monkeypatch.setattr(UnityVideoPipeline, "from_pretrained", refuse)


def generate(*argv) -> int:
    return cli.main(["generate", *map(str, argv)])


BAD_REQUESTS = [
    (["--task", "estimate", "--modality", "depth"], "exactly one --input"),
    (["--task", "joint", "--prompt", "x", "--modality", "skeleton"], "has not learned"),
    (["--task", "joint", "--prompt", "x", "--modality", "colour"], "unknown modality"),
    (["--task", "paint", "--prompt", "x"], "unknown task"),
    (["--task", "t2v"], "pass --prompt"),
    (["--task", "t2v", "--prompt", "x", "--size", "30", "32"], "not divisible by the codec"),
    (["--task", "t2v", "--prompt", "x", "--size", "36", "32"], "patch size"),
    (["--task", "control", "--modality", "depth", "flow", "--input", "{depth}"], "one input video per modality"),
    (["--task", "control", "--modality", "depth", "--input", "{broken}"], "cannot read video"),
    (["--task", "control", "--modality", "depth", "--input", "{missing}"], "file not found"),
    (["--task", "control", "--modality", "depth", "--input", "{depth}", "--frames", "9"], "9 requested"),
    (["--task", "estimate", "--modality", "depth", "--input", "{rgb}", "--steps", "0"], "--steps"),
    (["--task", "t2v", "--prompt", "x", "--out", "{gif}"], ".mp4 or .mkv"),
    (["--task", "estimate", "--modality", "depth", "--input", "{rgb}", "--ensemble", "0"], "--ensemble: must be an integer >= 1"),
    (["--task", "t2v", "--prompt", "x", "--ensemble", "4"], "--ensemble combines estimates"),
]


@pytest.mark.parametrize("argv, message", BAD_REQUESTS, ids=[m for _, m in BAD_REQUESTS])
def test_cli_rejects_impossible_requests_before_loading(checkpoint, inputs, tmp_path, no_model, capsys,
                                                       argv, message):
    paths = {**{k: str(v) for k, v in inputs.items()}, "missing": str(tmp_path / "missing.mp4"),
             "gif": str(tmp_path / "out.gif")}
    argv = [a.format(**paths) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "out.mp4")]
    assert generate("--checkpoint", checkpoint, *argv) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_a_task_the_checkpoint_did_not_learn(tmp_path, no_model, capsys):
    folder = save_checkpoint(tmp_path / "t2v-only", tasks=["t2v"])
    assert generate("--checkpoint", folder, "--task", "joint", "--prompt", "x", "--modality", "depth",
                    "--out", tmp_path / "o.mp4") == 2
    assert "trained for ['t2v'] only" in capsys.readouterr().err


def test_cli_without_checkpoint_names_the_missing_default(tmp_path, monkeypatch, no_model, capsys):
    monkeypatch.setattr(pipeline_cli, "DEFAULT_CHECKPOINT", tmp_path / "assets" / "tiny-world")
    assert generate("--prompt", "x", "--out", tmp_path / "o.mp4") == 2
    assert "default checkpoint" in capsys.readouterr().err


def test_cli_joint_writes_rgb_modalities_raw_and_preview(checkpoint, tmp_path):
    out = tmp_path / "gen" / "ball.mp4"
    assert generate("--checkpoint", checkpoint, "--task", "joint", "--prompt", "a ball", "--modality", "depth",
                    "flow", "--steps", "2", "--out", out, "--device", "cpu") == 0
    assert probe_video(out)[:3] == (F, H, W)
    for name in ("depth", "flow"):
        assert read_video(out.with_name(f"ball.{name}.mkv")).shape == (F, H, W, 3)
    raw = load_raw(out.with_name("ball.npz"))
    assert raw["depth"].shape == (F, H, W) and raw["flow"].shape == (F, H, W, 2)
    assert raw["meta"]["hints"]["depth"]["near"] == 1.0
    assert probe_video(out.with_name("ball.preview.mp4"))[1:3] == (H, 3 * W)


def test_cli_control_and_estimate_read_inputs(checkpoint, inputs, tmp_path):
    out = tmp_path / "control.mp4"
    assert generate("--checkpoint", checkpoint, "--task", "control", "--modality", "depth", "--input",
                    inputs["depth"], "--frames", F, "--steps", "2", "--scheduler", "unipc", "--out", out) == 0
    assert probe_video(out)[:3] == (F, H, W)
    out = tmp_path / "estimate.mkv"
    assert generate("--checkpoint", checkpoint, "--task", "estimate", "--modality", "depth", "--input",
                    inputs["rgb"], "--size", 16, 16, "--steps", "2", "--out", out) == 0
    assert load_raw(tmp_path / "estimate.npz")["depth"].shape == (F, 16, 16)  # the checkpoint's frames
    assert not out.exists()  # estimation generates no RGB video


def test_cli_runs_a_large_long_video_at_the_checkpoints_geometry(checkpoint, tmp_path, capsys, monkeypatch):
    """A real video (here 40 frames of 96x128) runs at the checkpoint's frames and size, says so, and
    only the frames used are decoded."""
    from unityvideo.data import video as video_module

    clip = write_video(tmp_path / "big.mp4", video(5, 40, 96, 128), fps=8, lossless=False)
    decoded = []
    original = video_module.read_video
    monkeypatch.setattr(video_module, "read_video", lambda path, indices=None: decoded.append(indices) or
                        original(path, indices))
    out = tmp_path / "depth.mkv"
    assert generate("--checkpoint", checkpoint, "--task", "estimate", "--modality", "depth", "--input", clip,
                    "--steps", "1", "--out", out) == 0
    assert load_raw(tmp_path / "depth.npz")["depth"].shape == (F, H, W)
    assert decoded == [list(range(F))]
    assert f"40 frames of 96x128 -> frames 0-{F - 1}, resized and centre-cropped to {H}x{W} (the checkpoint's size" \
        in capsys.readouterr().out


def test_cli_cache_condition_needs_a_model_trained_for_it(checkpoint, inputs, tmp_path, capsys):
    assert generate("--checkpoint", checkpoint, "--task", "control", "--modality", "depth", "--input",
                    inputs["depth"], "--frames", F, "--steps", "1", "--cache-condition",
                    "--out", tmp_path / "c.mp4") == 2
    assert "condition_isolation" in capsys.readouterr().err


def test_bfloat16_transformer_runs(checkpoint):
    pipe = UnityVideoPipeline.from_pretrained(checkpoint, torch_dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a ball", task="joint", modalities=["depth"], num_inference_steps=2, generator=gen(0))
    assert pipe.dtype == torch.bfloat16 and out.frames["depth"].shape == (1, F, H, W, 3)
    assert out.latents["rgb"].dtype == torch.float32  # the scheduler integrates in fp32


# ----- condition cache (a transformer trained with condition_isolation) ----------------------------


@pytest.fixture(scope="module")
def isolated_pipe(tmp_path_factory):
    folder = tmp_path_factory.mktemp("isolated")
    torch.manual_seed(0)
    model = UnityVideoTransformer.from_preset("tiny", num_layers=2, condition_isolation=True)
    with torch.no_grad():
        model.modality_table.normal_(0, 0.5)
    model.save_pretrained(folder / "transformer")
    CheckpointSpec(modalities=LEARNED, tasks=ALL_TASKS, frames=F, size=(H, W), fps=8, shift=3.0).save(folder)
    pipe = UnityVideoPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("batch_cfg", [True, False])
@pytest.mark.parametrize("task", ["control", "estimate"])
def test_condition_cache_gives_the_uncached_result(isolated_pipe, task, batch_cfg):
    """Text and modality guidance on: estimate's RGB condition sees the caption in one pass and the
    negative prompt in the other (two caches), control's conditions are the same in both (one)."""
    kwargs = dict(task=task, num_inference_steps=3, guidance_scale=3.0, modality_guidance_scale=2.0,
                  output_type="latent", batch_cfg=batch_cfg, **REQUESTS[task])
    kwargs.setdefault("prompt", "a person walks")
    plain = isolated_pipe(generator=gen(0), **kwargs).latents
    cached = isolated_pipe(generator=gen(0), cache_condition=True, **kwargs).latents
    for name in plain:
        assert (plain[name] - cached[name]).abs().max().item() <= 1e-5


def test_condition_cache_steps_run_only_the_targets(isolated_pipe, monkeypatch):
    seen = []
    forward = isolated_pipe.transformer.forward

    def recording(streams, condition_cache=None):
        seen.append(([s.modality for s in streams], condition_cache is not None))
        return forward(streams, condition_cache=condition_cache)

    monkeypatch.setattr(isolated_pipe.transformer, "forward", recording)
    isolated_pipe(task="control", conditions=REQUESTS["control"]["conditions"], num_inference_steps=2,
                  guidance_scale=3.0, output_type="latent", cache_condition=True)
    assert seen == [(["rgb"], True)] * 2  # cond and text passes in one batched forward per step


def test_condition_cache_needs_a_model_trained_for_it(pipe, isolated_pipe):
    with pytest.raises(ValueError, match="condition_isolation=True"):
        pipe(task="control", conditions=REQUESTS["control"]["conditions"], num_inference_steps=1,
             cache_condition=True)
    with pytest.raises(ValueError, match="control and estimate"):
        isolated_pipe("a ball", task="t2v", num_inference_steps=1, cache_condition=True)


# ----- test-time ensembles of estimates ----------------------------------------------------------------


def test_ensemble_first_member_is_the_single_estimate_and_members_are_combined(pipe, monkeypatch):
    request = dict(video=video(3), task="estimate", modalities=["depth", "segmentation"], num_inference_steps=2)
    single = pipe(**request, generator=gen(4))
    g = gen(4)
    members = [pipe(**request, generator=g).frames for _ in range(3)]  # one generator, advancing
    ensemble = pipe(**request, generator=gen(4), ensemble_size=3)
    for name in ("depth", "segmentation"):
        assert np.array_equal(members[0][name], single.frames[name])
        expected = get_modality(name).combine([m[name][0] for m in members])
        assert np.array_equal(ensemble.frames[name][0], expected)
        assert not np.array_equal(members[0][name], members[1][name])
    assert np.array_equal(ensemble.raw["segmentation"][0], get_modality("segmentation").decode(ensemble.frames["segmentation"][0]))
    assert torch.equal(ensemble.latents["depth"], single.latents["depth"])


@pytest.mark.parametrize("task", ["t2v", "joint", "control"])
def test_ensemble_is_only_for_estimation(pipe, task):
    with pytest.raises(ValueError, match="ensemble_size=2 combines estimates"):
        pipe(**REQUESTS[task], task=task, num_inference_steps=1, ensemble_size=2)
    with pytest.raises(ValueError, match="integer >= 1"):
        pipe(**REQUESTS["estimate"], task="estimate", num_inference_steps=1, ensemble_size=0)


# ----- one-step deterministic estimation ---------------------------------------------------------------


@pytest.fixture(scope="module")
def one_step_pipe(tmp_path_factory):
    """The `pipe` checkpoint's weights with estimate_mode one_step in its spec."""
    pipe = UnityVideoPipeline.from_pretrained(save_checkpoint(tmp_path_factory.mktemp("one_step"),
                                                              estimate_mode="one_step"))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_one_step_estimate_is_one_forward_from_zeros_and_deterministic(one_step_pipe, monkeypatch, caplog):
    assert one_step_pipe.estimate_mode == "one_step"
    seen = record_forwards(one_step_pipe, monkeypatch)
    request = dict(video=video(3), task="estimate", modalities=["depth", "segmentation"], num_inference_steps=8)
    with caplog.at_level("INFO", logger="unityvideo.pipeline"):
        first = one_step_pipe(**request, ensemble_size=4, generator=gen(0))
        assert len(seen) == 1  # one forward, whatever the steps and the ensemble size
        other = one_step_pipe(**request, ensemble_size=4, generator=gen(1))
    notes = [r.message for r in caplog.records if r.name == "unityvideo.pipeline"]
    assert len(notes) == 1 and "num_inference_steps=8 and ensemble_size=4 ignored" in notes[0]  # once, no error
    rgb, depth, seg = seen[0]
    assert rgb.latent.shape[0] == 1 and torch.all(rgb.timestep == 0)  # no guidance pass by default
    for stream in (depth, seg):
        assert torch.count_nonzero(stream.latent) == 0 and stream.timestep.tolist() == [1.0]
    v = pipe_velocity(one_step_pipe, seen[0])
    assert torch.allclose(first.latents["depth"], -v[1], atol=1e-6)  # x0 = x1 - v = -v
    assert torch.allclose(first.latents["segmentation"], -v[2], atol=1e-6)
    for name in ("depth", "segmentation"):  # deterministic: the generator does not matter
        assert torch.equal(first.latents[name], other.latents[name])
        assert np.array_equal(first.frames[name], other.frames[name])
    # UniPC's first sigma for one step is not exactly 1: the one-step path does not use the scheduler
    monkeypatch.setattr(one_step_pipe, "scheduler", make_scheduler("unipc", 3.0))
    again = one_step_pipe(**request, ensemble_size=2, generator=gen(2), output_type="latent")
    assert seen[-1][1].timestep.tolist() == [1.0] and torch.equal(again.latents["depth"], first.latents["depth"])


def pipe_velocity(pipe, streams):
    with torch.no_grad():
        return UnityVideoTransformer.forward(pipe.transformer, streams)


def test_one_step_mode_leaves_other_tasks_and_generative_checkpoints_alone(pipe, one_step_pipe, monkeypatch):
    for task in ("t2v", "control"):  # same weights: the same samples in both modes (to kernel rounding)
        request = dict(REQUESTS[task], task=task, num_inference_steps=2, output_type="latent", generator=gen(0))
        a, b = pipe(**request), one_step_pipe(**dict(request, generator=gen(0)))
        assert all(torch.allclose(a.latents[n], b.latents[n], atol=1e-5) for n in a.latents)
    assert pipe.estimate_mode == "generative"
    seen = record_forwards(pipe, monkeypatch)
    request = dict(video=video(3), task="estimate", modalities=["depth"], num_inference_steps=3, output_type="latent")
    a, b = pipe(**request, generator=gen(0)), pipe(**request, generator=gen(1))
    assert len(seen) == 6 and torch.count_nonzero(seen[0][1].latent) > 0  # from noise, 3 steps each
    assert not torch.equal(a.latents["depth"], b.latents["depth"])


def test_estimate_mode_is_read_from_the_spec_and_can_be_overridden(checkpoint, tmp_path):
    assert UnityVideoPipeline.from_pretrained(checkpoint, estimate_mode="one_step").estimate_mode == "one_step"
    with pytest.raises(ValueError, match="estimate_mode='fast'.*generative.*one_step"):
        UnityVideoPipeline.from_pretrained(checkpoint, estimate_mode="fast")
    # an older unityvideo.json without the field loads as generative; a bad value is a clear error
    old = save_checkpoint(tmp_path / "old")
    raw = json.loads((old / "unityvideo.json").read_text())
    del raw["estimate_mode"]
    (old / "unityvideo.json").write_text(json.dumps(raw))
    assert load_checkpoint_spec(old).estimate_mode == "generative"
    assert UnityVideoPipeline.from_pretrained(old).estimate_mode == "generative"
    (old / "unityvideo.json").write_text(json.dumps({**raw, "estimate_mode": "once"}))
    with pytest.raises(ValueError, match="unityvideo.json: estimate_mode='once'"):
        load_checkpoint_spec(old)


# ----- what the checkpoint says about estimation's caption ------------------------------------------


def test_estimate_gets_a_caption_only_if_it_was_trained_with_one(pipe, monkeypatch):
    """The shipped recipe trains L_est without a caption (estimate_caption false in the spec): the
    prompt a user passes must not reach the model; a pipeline told otherwise passes it."""
    seen = record_forwards(pipe, monkeypatch)
    request = dict(video=video(2), task="estimate", modalities=["depth"], num_inference_steps=1, generator=gen(0))
    assert pipe.spec.estimate_caption is False and pipe.estimate_caption is False
    pipe(prompt="a red ball rolls", **request)
    pipe(prompt="", **request)
    assert torch.equal(seen[0][0].context, seen[1][0].context)
    pipe.estimate_caption = True
    try:
        pipe(prompt="a red ball rolls", **request)
    finally:
        pipe.estimate_caption = False
    assert not torch.equal(seen[2][0].context, seen[0][0].context)


# ----- what diffusers users expect of a pipeline call ------------------------------------------------


def test_output_types_callback_and_videos_per_prompt(pipe):
    request = dict(prompt="a ball", task="t2v", num_frames=F, height=H, width=W, num_inference_steps=3)
    base = pipe(**request, generator=gen(0))
    pt = pipe(**request, generator=gen(0), output_type="pt").frames["rgb"]
    assert pt.shape == (1, F, 3, H, W) and pt.dtype == torch.float32
    assert torch.equal((pt * 255).round().to(torch.uint8).permute(0, 1, 3, 4, 2), torch.from_numpy(base.frames["rgb"]))
    pil = pipe(**request, generator=gen(0), output_type="pil").frames["rgb"]
    assert len(pil) == 1 and len(pil[0]) == F and np.array_equal(np.asarray(pil[0][2]), base.frames["rgb"][0, 2])

    seen = []

    def zero_after_last_step(p, step, timestep, kwargs):
        seen.append(step)
        return {"latents": torch.zeros_like(kwargs["latents"])} if step == 2 else None

    zeroed = pipe(**request, generator=gen(0), output_type="latent", callback_on_step_end=zero_after_last_step)
    assert seen == [0, 1, 2] and not zeroed.latents["rgb"].any()

    two = pipe(**request, generator=gen(0), num_videos_per_prompt=2)
    assert two.frames["rgb"].shape[0] == 2 and not np.array_equal(two.frames["rgb"][0], two.frames["rgb"][1])


def test_model_cpu_offload_moves_one_model_at_a_time_and_changes_nothing(pipe, monkeypatch):
    request = dict(video=video(4), task="estimate", modalities=["depth"], num_inference_steps=2)
    plain = pipe(**request, generator=gen(0))
    moves = []
    for name in ("text_encoder", "transformer", "codec"):
        module = getattr(pipe, name)
        original = module.to
        monkeypatch.setattr(module, "to", lambda device, _o=original, _n=name: moves.append((_n, str(device))) or _o(device))
    pipe.enable_model_cpu_offload("cpu")
    try:
        offloaded = pipe(**request, generator=gen(0))
    finally:
        pipe._offload_device = None
    assert np.array_equal(offloaded.frames["depth"], plain.frames["depth"])
    running = [n for n, d in moves[3:] if d == "cpu"]  # after enable's own pipe.to("cpu")
    assert moves[3:] == [(n, "cpu") for n in running] and running[::2] == ["codec", "text_encoder", "transformer",
                                                                            "codec"]
    with pytest.raises(ValueError, match="only the Wan VAE codecs tile"):
        pipe.enable_vae_tiling()


def test_a_checkpoint_of_another_picture_format_is_refused_for_that_modality(checkpoint, tmp_path):
    """A model trained on an earlier DensePose picture format would be decoded wrongly: refuse that
    modality (naming it and the fix), keep serving the others. A spec file from before formats were
    recorded counts as format 1."""
    old = tmp_path / "old"
    shutil.copytree(checkpoint, old)
    raw = json.loads((old / "unityvideo.json").read_text())
    raw["modalities"] = [*LEARNED, "densepose"]
    del raw["encodings"]
    (old / "unityvideo.json").write_text(json.dumps(raw))
    assert load_checkpoint_spec(old).encodings == {}
    pipe = UnityVideoPipeline.from_pretrained(old)
    pipe.set_progress_bar_config(disable=True)
    with pytest.raises(ValueError, match=r"densepose format 1 \(this version reads 2\).*fine-tune"):
        pipe(video=video(0), task="estimate", modalities=["densepose"], num_inference_steps=1)
    out = pipe(video=video(0), task="estimate", modalities=["depth"], num_inference_steps=1)
    assert out.frames["depth"].shape[1:4] == (F, H, W)
    assert load_checkpoint_spec(checkpoint).encodings == ENCODING_VERSIONS  # written by this version
