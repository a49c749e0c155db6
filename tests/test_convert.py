"""The authors' UnityVideo checkpoint and Wan's original-format weights, converted exactly.

`published_forward` is written here from the published description of the authors' model (their
UnifiedWanModel on DiffSynth's WanModel): Wan blocks over RGB and modality tokens side by side in
width, RoPE over 2W, one shared timestep, split cross-attention, a Linear after the modality patch
embedding plus a per-modality identity vector, one head for every modality. It reads a state dict
in their names and shares no code with the converter or the model. Where the `diffsynth` package is
installed (the torchvision test environment), the reference's single-stream path is checked against
DiffSynth's own WanModel, which ties it to the published implementation.
"""

import json
import math
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from unityvideo import cli
from unityvideo.models import Stream, UnityVideoTransformer
from unityvideo.models.checkpoint import load_checkpoint_spec
from unityvideo.models.convert import AUTHORS_MODALITIES, AUTHORS_PROMPTS, authors_transformer

DIM, HEADS, IN, TEXT, FREQ, FFN, LAYERS, PATCH = 64, 2, 4, 16, 16, 96, 2, (1, 2, 2)


# ----- the published architecture, from scratch --------------------------------------------------------


def _linear(state, name, x):
    return F.linear(x, state[f"{name}.weight"], state.get(f"{name}.bias"))


def _rms(state, name, x, eps=1e-6):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * state[f"{name}.weight"]


def _layer_norm(x, state=None, name=None, eps=1e-6):
    weight = state[f"{name}.weight"] if name else None
    bias = state[f"{name}.bias"] if name else None
    return F.layer_norm(x, x.shape[-1:], weight, bias, eps)


def _rope_angles(grid, head_dim, theta=10000.0):
    """(f*h*w, head_dim/2) angles: the head dim split frames / height / width as Wan does."""
    third = head_dim // 3
    splits = (head_dim - 2 * third, third, third)
    f, h, w = grid
    pos = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
    pos = pos.reshape(-1, 3).double()
    parts = [pos[:, i:i + 1] * theta ** (-torch.arange(0, n, 2).double() / n) for i, n in enumerate(splits)]
    return torch.cat(parts, 1)


def _rotate(x, angles):  # x (B, L, H, d): consecutive pairs as complex numbers
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2))
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(angles), angles)[None, :, None]).flatten(3).float()


def _attention(q, k, v, heads):
    split = lambda t: t.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731
    return F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).flatten(2)


def published_forward(state, streams, timestep, heads=HEADS):
    """streams: [(latent, context, embed, head)] left to right in width, where embed(latent) gives
    (B, f, h, w, D) tokens and head is a state prefix. timestep: (B,) in [0, 1000], shared."""
    p = "base."
    half = FREQ // 2
    arg = timestep[:, None].double() * 10000 ** (-torch.arange(half).double() / half)
    temb = _linear(state, p + "time_embedding.2",
                   F.silu(_linear(state, p + "time_embedding.0", torch.cat([arg.cos(), arg.sin()], 1).float())))
    tmod = _linear(state, p + "time_projection.1", F.silu(temb)).unflatten(1, (6, DIM))
    grids = [embed(latent) for latent, _, embed, _ in streams]
    b, f, h, w, _ = grids[0].shape
    x = torch.cat(grids, 3).reshape(b, -1, DIM)
    contexts = [_linear(state, p + "text_embedding.2",
                        F.gelu(_linear(state, p + "text_embedding.0", c), approximate="tanh")) for _, c, _, _ in streams]
    angles = _rope_angles((f, h, w * len(streams)), DIM // heads)
    for i in range(LAYERS):
        q_ = f"{p}blocks.{i}."
        shift, scale, gate, shift2, scale2, gate2 = (state[q_ + "modulation"] + tmod).chunk(6, 1)
        a = _layer_norm(x) * (1 + scale) + shift
        q = _rotate(_rms(state, q_ + "self_attn.norm_q", _linear(state, q_ + "self_attn.q", a)).unflatten(-1, (heads, -1)), angles)
        k = _rotate(_rms(state, q_ + "self_attn.norm_k", _linear(state, q_ + "self_attn.k", a)).unflatten(-1, (heads, -1)), angles)
        v = _linear(state, q_ + "self_attn.v", a)
        x = x + gate * _linear(state, q_ + "self_attn.o", _attention(q.flatten(2), k.flatten(2), v, heads))
        parts = x.reshape(b, f, h, len(streams), w, DIM)  # split cross-attention: each stream its own prompt
        crossed = []
        for s, ctx in enumerate(contexts):
            xs = parts[:, :, :, s].reshape(b, -1, DIM)
            qs = _rms(state, q_ + "cross_attn.norm_q", _linear(state, q_ + "cross_attn.q", _layer_norm(xs, state, q_ + "norm3")))
            ks = _rms(state, q_ + "cross_attn.norm_k", _linear(state, q_ + "cross_attn.k", ctx))
            vs = _linear(state, q_ + "cross_attn.v", ctx)
            crossed.append((xs + _linear(state, q_ + "cross_attn.o", _attention(qs, ks, vs, heads))).reshape(b, f, h, w, DIM))
        x = torch.stack(crossed, 3).reshape(b, -1, DIM)
        a = _layer_norm(x) * (1 + scale2) + shift2
        x = x + gate2 * _linear(state, q_ + "ffn.2", F.gelu(_linear(state, q_ + "ffn.0", a), approximate="tanh"))
    outs = []
    parts = x.reshape(b, f, h, len(streams), w, DIM)
    for s, (_, _, _, head) in enumerate(streams):
        shift, scale = (state[head + ".modulation"] + temb[:, None]).chunk(2, 1)
        y = _linear(state, head + ".head", _layer_norm(parts[:, :, :, s].reshape(b, -1, DIM)) * (1 + scale) + shift)
        y = y.reshape(b, f, h, w, *PATCH, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        outs.append(y.reshape(b, -1, f * PATCH[0], h * PATCH[1], w * PATCH[2]))
    return outs


def _conv(state, name):
    def embed(latent):
        return F.conv3d(latent, state[f"{name}.weight"], state[f"{name}.bias"], stride=PATCH).permute(0, 2, 3, 4, 1)
    return embed


def authors_streams(state, rgb, cond, ctx, ctx_m, modality):
    def modality_tokens(latent):
        return _linear(state, "flow_in", _conv(state, "flow_patch_embedding")(latent)) + state[f"modality_embeddings.{modality}"]
    return [(rgb, ctx, _conv(state, "base.patch_embedding"), "base.head"), (cond, ctx_m, modality_tokens, "flow_head")]


# ----- a random checkpoint in the authors' layout ----------------------------------------------------------


def random_wan_state(seed=0, IN=IN, TEXT=TEXT) -> dict:  # noqa: N803
    """A Wan transformer in Wan's original (DiffSynth's) names, random weights of a realistic scale."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    out = {"patch_embedding.weight": r(DIM, IN, *PATCH), "patch_embedding.bias": r(DIM),
           "text_embedding.0.weight": r(DIM, TEXT), "text_embedding.0.bias": r(DIM),
           "text_embedding.2.weight": r(DIM, DIM), "text_embedding.2.bias": r(DIM),
           "time_embedding.0.weight": r(DIM, FREQ), "time_embedding.0.bias": r(DIM),
           "time_embedding.2.weight": r(DIM, DIM), "time_embedding.2.bias": r(DIM),
           "time_projection.1.weight": r(6 * DIM, DIM), "time_projection.1.bias": r(6 * DIM),
           "head.head.weight": r(IN * math.prod(PATCH), DIM), "head.head.bias": r(IN * math.prod(PATCH)),
           "head.modulation": r(1, 2, DIM)}
    for i in range(LAYERS):
        b = f"blocks.{i}."
        for attn in ("self_attn", "cross_attn"):
            for proj in "qkvo":
                out[f"{b}{attn}.{proj}.weight"], out[f"{b}{attn}.{proj}.bias"] = r(DIM, DIM), r(DIM)
            out[f"{b}{attn}.norm_q.weight"], out[f"{b}{attn}.norm_k.weight"] = 1 + r(DIM), 1 + r(DIM)
        out[f"{b}norm3.weight"], out[f"{b}norm3.bias"] = 1 + r(DIM), r(DIM)
        out[f"{b}ffn.0.weight"], out[f"{b}ffn.0.bias"] = r(FFN, DIM), r(FFN)
        out[f"{b}ffn.2.weight"], out[f"{b}ffn.2.bias"] = r(DIM, FFN), r(DIM)
        out[f"{b}modulation"] = r(1, 6, DIM)
    return out


def authors_state(base: dict, seed=1) -> dict:
    IN = base["patch_embedding.weight"].shape[1]  # noqa: N806
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape, s=0.2: torch.randn(*shape, generator=g) * s  # noqa: E731
    state = {f"base.{k}": v for k, v in base.items()}
    state.update({"flow_patch_embedding.weight": r(DIM, IN, *PATCH), "flow_patch_embedding.bias": r(DIM),
                  "flow_in.weight": r(DIM, DIM), "flow_in.bias": r(DIM),  # trained: no longer zero
                  "flow_head.head.weight": r(IN * math.prod(PATCH), DIM), "flow_head.head.bias": r(IN * math.prod(PATCH)),
                  "flow_head.modulation": r(1, 2, DIM)})
    state.update({f"modality_embeddings.{m}": r(DIM) for m in AUTHORS_MODALITIES})
    return state


def inputs(seed=2, batch=2):
    g = torch.Generator().manual_seed(seed)
    latent = lambda: torch.randn(batch, IN, 2, 4, 4, generator=g)  # noqa: E731
    context = lambda n: torch.cat([torch.randn(batch, n, TEXT, generator=g), torch.zeros(batch, 8 - n, TEXT)], 1)  # noqa: E731
    return latent(), latent(), context(3), context(5)  # zero-padded prompts, no mask


# The three tasks of the authors' inference: which stream is clean, one shared timestep (the noisy one's).
TASKS = {"video2flow": (0.0, 0.6), "flow2video": (0.6, 0.0), "text2all": (0.6, 0.6)}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("theirs", ["raft", "skeleton"])
def test_converted_model_equals_the_published_forward(task, theirs):
    state = authors_state(random_wan_state())
    model = authors_transformer(state, num_attention_heads=HEADS).eval()
    rgb, cond, ctx, ctx_m = inputs()
    t_rgb, t_mod = TASKS[task]
    shared = torch.full((2,), 1000 * max(t_rgb, t_mod))
    ref_rgb, ref_mod = published_forward(state, authors_streams(state, rgb, cond, ctx, ctx_m, theirs), shared)
    with torch.no_grad():
        ours_rgb, ours_mod = model([Stream("rgb", rgb, torch.full((2,), t_rgb), ctx),
                                    Stream(AUTHORS_MODALITIES[theirs], cond, torch.full((2,), t_mod), ctx_m)])
    scale = float(ref_rgb.abs().max())
    torch.testing.assert_close(ours_rgb, ref_rgb, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(ours_mod, ref_mod, rtol=0, atol=1e-5 * scale)


def test_the_reference_is_not_blind_to_the_folded_parts():
    """Dropping flow_in, the identity vector or the shared head changes the reference's output: the
    equality above tests each of them."""
    state = authors_state(random_wan_state())
    rgb, cond, ctx, ctx_m = inputs()
    t = torch.full((2,), 600.0)
    _, base = published_forward(state, authors_streams(state, rgb, cond, ctx, ctx_m, "depth"), t)
    for key in ("flow_in.weight", "modality_embeddings.depth", "flow_head.head.weight"):
        changed = {**state, key: torch.zeros_like(state[key])}
        _, out = published_forward(changed, authors_streams(changed, rgb, cond, ctx, ctx_m, "depth"), t)
        assert (out - base).abs().max() > 1e-3, key


def test_original_wan_weights_load_as_the_backbone(tmp_path):
    base = random_wan_state()
    save_file(base, str(tmp_path / "wan.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "WanModel", "num_heads": HEADS}))
    model = UnityVideoTransformer.from_backbone(tmp_path / "wan.safetensors", modalities=("depth",)).eval()
    rgb, _, ctx, _ = inputs()
    t = torch.full((2,), 0.4)
    streams = [(rgb, ctx, _conv({f"base.{k}": v for k, v in base.items()}, "base.patch_embedding"), "base.head")]
    (ref,) = published_forward({f"base.{k}": v for k, v in base.items()}, streams, 1000 * t)
    with torch.no_grad():
        (ours,) = model([Stream("rgb", rgb, t, ctx)])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))
    folder = UnityVideoTransformer.from_backbone(tmp_path, modalities=("depth",))  # the folder works too
    assert torch.equal(folder.backbone.proj_out.weight, model.backbone.proj_out.weight)


# ----- the command ---------------------------------------------------------------------------------------


def fake_base(root):
    """A diffusers Wan2.2 folder as the converter reads it: text_encoder/, tokenizer/, vae/ (tiny)."""
    from test_text import tiny_umt5_folder

    tiny_umt5_folder(root)
    (root / "vae").mkdir()
    return root


def test_convert_writes_a_checkpoint_folder_the_pipeline_reads(tmp_path):
    state = authors_state(random_wan_state())
    save_file({k: v.to(torch.bfloat16) for k, v in state.items()}, str(tmp_path / "authors.safetensors"))
    base = fake_base(tmp_path / "Wan2.2-TI2V-5B-Diffusers")
    out = tmp_path / "converted"
    assert cli.main(["convert", str(tmp_path / "authors.safetensors"), "--base", str(base), "--out", str(out),
                     "--num-heads", str(HEADS)]) == 0
    spec = load_checkpoint_spec(out)
    assert spec.modalities == ["depth", "flow", "segmentation", "skeleton", "densepose"]
    assert spec.modality_prompts["flow"] == AUTHORS_PROMPTS["flow"] and spec.estimate_caption
    assert (spec.text_convention, spec.codec, spec.shift, spec.frames, tuple(spec.size)) == \
        ("zero_padded", "wan2.2", 1.0, 33, (256, 256))
    assert (out / spec.codec_folder).resolve() == (base / "vae").resolve()  # relative to the checkpoint
    model = UnityVideoTransformer.from_pretrained(out / "transformer")
    assert model.config.shared_timestep and not model.config.adaln_table


def tiny_wan22_vae(folder):
    from diffusers import AutoencoderKLWan

    torch.manual_seed(0)
    AutoencoderKLWan(base_dim=16, decoder_base_dim=16, z_dim=48, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                     temperal_downsample=[False, True, True], is_residual=True, in_channels=12, out_channels=12,
                     patch_size=2, scale_factor_spatial=16, scale_factor_temporal=4, latents_mean=[0.0] * 48,
                     latents_std=[1.0] * 48).save_pretrained(folder)


@pytest.mark.parametrize("task, ours", [("video2flow", "estimate"), ("flow2video", "control"), ("text2all", "joint")])
def test_the_pipeline_runs_the_converted_model_as_the_authors_sample(tmp_path, monkeypatch, task, ours):
    """One Euler step from t = 1 (where both samplers agree): the pipeline gives the model the authors'
    prompts, zero-padded, and one shared timestep, and its latent is x_1 - v of the published forward."""
    from unityvideo.models.convert import convert_authors_checkpoint
    from unityvideo.pipeline import UnityVideoPipeline

    state = authors_state(random_wan_state(IN=48, TEXT=32))
    save_file(state, str(tmp_path / "authors.safetensors"))
    base = fake_base(tmp_path / "base")
    shutil.rmtree(base / "vae")
    tiny_wan22_vae(base / "vae")
    pipe = UnityVideoPipeline.from_pretrained(convert_authors_checkpoint(tmp_path / "authors.safetensors", base,
                                                                         tmp_path / "out", HEADS))
    pipe.set_progress_bar_config(disable=True)
    seen = []
    forward = pipe.transformer.forward
    monkeypatch.setattr(pipe.transformer, "forward", lambda streams: seen.append(streams) or forward(streams))
    clip = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    request = {"estimate": dict(video=clip, modalities=["flow"]), "control": dict(prompt="a walk", conditions={"flow": clip}),
               "joint": dict(prompt="a walk", modalities=["flow"])}[ours]
    out = pipe(task=ours, num_inference_steps=1, guidance_scale=1.0, output_type="latent",
               generator=torch.Generator().manual_seed(0), **request)
    (streams,) = seen
    rgb, flow = streams
    prompt, _ = pipe.text_encoder.model_inputs([AUTHORS_PROMPTS["flow"]], convention="zero_padded")
    assert flow.context_mask is None and torch.equal(flow.context, prompt.expand_as(flow.context))
    t = torch.full((1,), 1000.0)  # both streams at the noisy stream's t = 1, as the authors run it
    ref_rgb, ref_flow = published_forward(state, authors_streams(state, rgb.latent, flow.latent, rgb.context,
                                                                 flow.context, "raft"), t)
    target, x1, v = {"estimate": ("flow", flow.latent, ref_flow), "control": ("rgb", rgb.latent, ref_rgb),
                     "joint": ("rgb", rgb.latent, ref_rgb)}[ours]
    expected = x1 - v
    torch.testing.assert_close(out.latents[target], expected, rtol=0, atol=1e-4 * float(expected.abs().max()))
    pipe(task=ours, num_inference_steps=2, guidance_scale=3.0, generator=torch.Generator().manual_seed(0),
         **request)  # CFG on top of the authors' model


def test_convert_errors_name_what_is_wrong(tmp_path, capsys):
    base = fake_base(tmp_path / "base")
    save_file({"some.weight": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    assert cli.main(["convert", str(tmp_path / "other.safetensors"), "--base", str(base),
                     "--out", str(tmp_path / "o")]) == 2
    assert "not the authors' UnityVideo checkpoint" in capsys.readouterr().err
    shutil.rmtree(base / "vae")
    assert cli.main(["convert", str(tmp_path / "other.safetensors"), "--base", str(base),
                     "--out", str(tmp_path / "o")]) == 2
    assert "vae: missing" in capsys.readouterr().err


# ----- against DiffSynth's own WanModel (where diffsynth is installed) ---------------------------------------


def test_the_reference_equals_diffsynths_wan_model():
    """DiffSynth's own Wan forward (`model_fn_wan_video`, what its pipelines and the authors' training
    build on) on its own WanModel equals the reference's single-stream path and our conversion."""
    pytest.importorskip("diffsynth", reason="diffsynth is installed only in the torchvision test environment "
                        "(make test-torchvision)")
    from diffsynth.models.wan_video_dit import WanModel
    from diffsynth.pipelines.wan_video import model_fn_wan_video

    torch.manual_seed(0)
    wan = WanModel(dim=DIM, in_dim=IN, ffn_dim=FFN, out_dim=IN, text_dim=TEXT, freq_dim=FREQ, eps=1e-6,
                   patch_size=PATCH, num_heads=HEADS, num_layers=LAYERS, has_image_input=False).eval()
    state = {f"base.{k}": v for k, v in wan.state_dict().items()}
    rgb, _, ctx, _ = inputs(batch=1)
    t = torch.tensor([300.0])
    with torch.no_grad():
        theirs = model_fn_wan_video(dit=wan, latents=rgb, timestep=t, context=ctx)
    (ref,) = published_forward(state, [(rgb, ctx, _conv(state, "base.patch_embedding"), "base.head")], t)
    torch.testing.assert_close(ref, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))
    model = authors_transformer(authors_state({k[5:]: v for k, v in state.items()}), HEADS).eval()
    with torch.no_grad():
        (ours,) = model([Stream("rgb", rgb, t / 1000, ctx)])
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5 * float(theirs.abs().max()))
