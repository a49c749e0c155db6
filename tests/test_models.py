"""UnityVideoTransformer: exactness against Wan, per-stream parts, presets, loading and saving."""

import dataclasses
import json
import shutil

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from unityvideo.models import PRESETS, Stream, UnityVideoTransformer, forward_flops

B, C, F, H, W = 2, 48, 3, 4, 6  # latent grid 3 x 2 x 3 tokens per stream with patch (1, 2, 2)
TEXT = 384


def tiny(**overrides) -> UnityVideoTransformer:
    torch.manual_seed(0)
    return UnityVideoTransformer.from_preset("tiny", num_layers=2, **overrides).eval()


def stream(modality, t=None, context_len=5, mask=None, seed=0) -> Stream:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(B, generator=g) if t is None else t
    return Stream(modality, torch.randn(B, C, F, H, W, generator=g), t,
                  torch.randn(B, context_len, TEXT, generator=g), mask)


def randomize_unity_parts(model):
    """Make the added parameters non-trivial so tests can tell them apart."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("backbone."):
                p.add_(torch.randn_like(p) * 0.1)


# ----- exactness ----------------------------------------------------------------------------------


def test_single_rgb_stream_equals_wan_backbone():
    model = tiny()
    s = stream("rgb")
    with torch.no_grad():
        ours = model([s])[0]
        wan = model.backbone(s.latent, 1000 * s.timestep, s.context).sample
    assert ours.shape == s.latent.shape
    assert (ours - wan).abs().max().item() <= 1e-5


def test_streams_side_by_side_equal_wan_on_a_wide_canvas():
    """With one shared caption and no experts, N streams = Wan on the streams concatenated in width,
    with a per-token timestep map (Wan2.2's expanded timesteps): checks RoPE offsets, per-stream
    modulation and the heads."""
    model = tiny(in_context=False, experts="none")
    streams = [stream("rgb", seed=1), stream("depth", seed=2), stream("flow", torch.zeros(B), seed=3)]
    canvas = torch.cat([s.latent for s in streams], dim=-1)
    ph, pw = H // 2, W // 2
    t = torch.stack([s.timestep for s in streams], 1)[:, None, None, :, None].expand(B, F, ph, 3, pw)
    with torch.no_grad():
        ours = torch.cat(model(streams), dim=-1)
        wan = model.backbone(canvas, 1000 * t.reshape(B, -1), streams[0].context).sample
    assert (ours - wan).abs().max().item() <= 1e-5


def test_shared_stream_positions_give_every_stream_the_single_stream_rope():
    """stream_positions="shared": each stream's RoPE is the one-stream table (aligned tokens of two
    streams have zero relative rotation); side_by_side differs from it for the second stream."""
    grid = (F, H // 2, W // 2)
    n = grid[0] * grid[1] * grid[2]
    single = tiny()._stream_rope(1, grid)[0]
    shared = tiny(stream_positions="shared")._stream_rope(3, grid)[0]
    side = tiny()._stream_rope(3, grid)[0]
    for s in range(3):
        assert torch.equal(shared[:, s * n:(s + 1) * n], single)
    assert not torch.equal(side[:, n:2 * n], single)
    with pytest.raises(ValueError, match="stream_positions"):
        tiny(stream_positions="diagonal")


def test_rope_theta_changes_the_tables_and_survives_save_and_load(tmp_path):
    model = tiny(rope_theta=100.0)
    grid = (F, H // 2, W // 2)
    assert not torch.equal(model._stream_rope(2, grid)[0], tiny()._stream_rope(2, grid)[0])
    model.save_pretrained(tmp_path)
    loaded = UnityVideoTransformer.from_pretrained(tmp_path)
    assert torch.equal(loaded._stream_rope(2, grid)[0], model._stream_rope(2, grid)[0])


def influence_of_condition(model, f=1, h=1, w=2):
    """Per condition patch, how much the target's output at patch (f, h, w) depends on it."""
    target, condition = stream("rgb"), stream("depth", torch.zeros(B))
    cond = condition.latent[:1].clone().requires_grad_(True)
    out = model([Stream("rgb", target.latent[:1], target.timestep[:1], target.context[:1]),
                 Stream("depth", cond, torch.zeros(1), condition.context[:1])])[0]
    out[..., f, 2 * h:2 * h + 2, 2 * w:2 * w + 2].sum().backward()
    return cond.grad.abs().sum(dim=(0, 1)).unflatten(1, (H // 2, 2)).unflatten(3, (W // 2, 2)).sum(dim=(2, 4))


def test_local_attention_init_with_shared_positions_reads_the_aligned_condition_patch():
    influence = influence_of_condition(tiny(stream_positions="shared", attention_init="local"))
    assert influence.flatten().argmax().item() == (1 * (H // 2) + 1) * (W // 2) + 2  # patch (1, 1, 2)
    assert influence[1, 1, 2] > 2 * influence.flatten().sort().values[-2]
    with pytest.raises(ValueError, match="attention_init"):
        tiny(attention_init="sharp")


def reference_block(block, x, contexts, modulation, rope):
    """Slow, obvious per-stream Wan block: loops over streams for modulation and cross-attention."""
    chunks = lambda h: h.chunk(len(contexts), dim=1)  # noqa: E731
    mods = [(block.scale_shift_table + modulation[:, s]).chunk(6, dim=1) for s in range(len(contexts))]
    h = torch.cat([block.norm1(c) * (1 + m[1]) + m[0] for c, m in zip(chunks(x), mods)], 1)
    a = block.attn1(h, None, None, rope)
    x = torch.cat([c + ac * m[2] for c, ac, m in zip(chunks(x), chunks(a), mods)], 1)
    x = torch.cat([c + block.attn2(block.norm2(c), ctx) for c, ctx in zip(chunks(x), contexts)], 1)
    h = torch.cat([block.norm3(c) * (1 + m[4]) + m[3] for c, m in zip(chunks(x), mods)], 1)
    f = block.ffn(h)
    return torch.cat([c + fc * m[5] for c, fc, m in zip(chunks(x), chunks(f), mods)], 1)


def test_forward_equals_a_per_stream_reference():
    """Per-stream cross-attention (contexts of different lengths, padded + masked inside) and
    per-stream modulation equal a loop over streams."""
    model = tiny()
    randomize_unity_parts(model)
    streams = [stream("rgb", context_len=7, seed=1), stream("depth", context_len=3, seed=2),
               stream("skeleton", torch.zeros(B), context_len=5, seed=3)]
    with torch.no_grad():
        ours = model(streams)
        x = torch.cat([model._embed(s) for s in streams], 1)
        rope = model._stream_rope(3, (F, H // 2, W // 2))
        temb = model._timestep_embeddings(streams, torch.float32)
        emb = model.backbone.condition_embedder
        modulation = emb.time_proj(emb.act_fn(temb)).unflatten(2, (6, -1))
        contexts = [emb.text_embedder(s.context) for s in streams]
        for block in model.backbone.blocks:
            x = reference_block(block, x, contexts, modulation, rope)
        for i, (s, tokens) in enumerate(zip(streams, x.chunk(3, dim=1))):
            head = model._head(s.modality)  # the backbone for rgb, the modality's expert otherwise
            shift, scale = (head.scale_shift_table + temb[:, i, None]).chunk(2, dim=1)
            ref = head.proj_out(model.backbone.norm_out(tokens) * (1 + scale) + shift)
            assert (ours[i] - model._unpatchify(ref, (F, H // 2, W // 2))).abs().max().item() <= 1e-5


# ----- the UnityVideo parts -----------------------------------------------------------------------


def test_any_number_of_streams():
    model = tiny()
    names = ["rgb", "depth", "flow", "segmentation", "skeleton", "densepose"]
    for n in (1, 2, 6):
        outs = model([stream(m, seed=i) for i, m in enumerate(names[:n])])
        assert [o.shape for o in outs] == [(B, C, F, H, W)] * n


def test_clean_condition_is_modulated_as_clean_and_shared_timestep_option():
    per_stream, shared = tiny(), tiny(shared_timestep=True)
    shared.load_state_dict(per_stream.state_dict())
    t = torch.full((B,), 0.7)
    rgb = stream("rgb", t)
    depth_clean, depth_noisy = stream("depth", torch.zeros(B), seed=1), stream("depth", t, seed=1)
    with torch.no_grad():
        temb = per_stream._timestep_embeddings([rgb, depth_clean], torch.float32)
        emb = per_stream.backbone.condition_embedder
        clean = emb.time_embedder(emb.timesteps_proj(torch.zeros(B)))
        assert torch.allclose(temb[:, 1], clean, atol=1e-6)  # t = 0 -> the embedding of timestep 0
        # Shared timestep (authors' code): the clean stream is told the noisy stream's timestep.
        assert torch.equal(shared([rgb, depth_clean])[0], shared([rgb, depth_noisy])[0])
        assert not torch.allclose(per_stream([rgb, depth_clean])[0], per_stream([rgb, depth_noisy])[0])


def test_adaln_table_is_zero_initialised_and_per_modality():
    model = tiny()
    assert model.modality_table.shape == (6, 128) and not model.modality_table.any()
    rgb, depth = stream("rgb"), stream("depth", seed=1)
    with torch.no_grad():
        before = model([rgb, depth])
        model.modality_table[model.stream_names.index("depth")] = 1.0
        after = model([rgb, depth])
        assert torch.equal(model([rgb])[0], model.backbone(rgb.latent, 1000 * rgb.timestep, rgb.context).sample)
    assert not torch.allclose(before[1], after[1])
    assert tiny(adaln_table=False).modality_table is None


def test_in_context_learner_and_its_ablation():
    rgb, depth = stream("rgb"), stream("depth", seed=1, context_len=3)
    other_prompt = Stream("depth", depth.latent, depth.timestep, torch.randn(B, 3, TEXT))
    model, ablated = tiny(), tiny(in_context=False)
    with torch.no_grad():
        assert not torch.allclose(model([rgb, depth])[1], model([rgb, other_prompt])[1])
        assert torch.equal(ablated([rgb, depth])[1], ablated([rgb, other_prompt])[1])
        # A mask hides tokens exactly: masked tokens may hold anything.
        mask = torch.tensor([[True, True, False]] * B)
        garbage = depth.context.clone()
        garbage[:, 2] = 1e3
        a = model([rgb, Stream("depth", depth.latent, depth.timestep, depth.context, mask)])
        b = model([rgb, Stream("depth", depth.latent, depth.timestep, garbage, mask)])
        c = model([rgb, Stream("depth", depth.latent, depth.timestep, depth.context[:, :2])])
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all((x - y).abs().max() <= 1e-5 for x, y in zip(a, c))


def test_modality_experts_start_as_rgb_copies():
    model = tiny()
    for name in model.config.modalities:
        assert torch.equal(model.patch_embedders[name].weight, model.backbone.patch_embedding.weight)
        assert torch.equal(model.heads[name].proj_out.weight, model.backbone.proj_out.weight)
        assert torch.equal(model.heads[name].scale_shift_table, model.backbone.scale_shift_table)
    with torch.no_grad():
        model.patch_embedders["depth"].weight.add_(0.1)
        rgb, depth = stream("rgb"), stream("depth", seed=1)
        x = model([rgb, depth])
        y = model([dataclasses.replace(rgb, modality="flow"), depth])  # rgb's latent through flow's expert
    assert torch.allclose(x[0], y[0], atol=1e-6)  # flow's expert still equals rgb's
    assert list(tiny(experts="shared").patch_embedders) == ["shared"]
    assert len(tiny(experts="none").heads) == 0


def test_every_new_parameter_gets_gradient_in_a_joint_step():
    model = tiny().train()
    names = ("rgb",) + tuple(model.config.modalities)
    outs = model([stream(m, seed=i) for i, m in enumerate(names)])
    sum(o.square().mean() for o in outs).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        if not name.startswith("backbone."):
            assert p.grad.abs().sum() > 0, name


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny().train()
    streams = [stream("rgb"), stream("depth", seed=1)]
    sum(o.sum() for o in model(streams)).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.enable_gradient_checkpointing()
    assert model.gradient_checkpointing
    sum(o.sum() for o in model(streams)).backward()
    for n, g in grads.items():
        assert torch.allclose(model.get_parameter(n).grad, g, atol=1e-5), n


def test_bad_streams_get_clear_errors():
    model = tiny(modalities=("depth",))
    with pytest.raises(ValueError, match="unknown modality"):
        model([stream("rgb"), stream("flow")])
    bad = stream("depth")
    bad.latent = bad.latent[..., :4]
    with pytest.raises(ValueError, match="share one grid"):
        model([stream("rgb"), bad])
    with pytest.raises(ValueError, match="text_dim"):
        model([Stream("rgb", bad.latent, 0.5, torch.randn(B, 3, 7))])
    with pytest.raises(ValueError, match="timestep must be"):
        model([stream("rgb", t=torch.rand(B, 1))])
    with pytest.raises(ValueError, match="no True entry"):
        model([stream("rgb", mask=torch.zeros(B, 5, dtype=torch.bool))])
    with pytest.raises(ValueError, match="always present"):
        UnityVideoTransformer.from_preset("tiny", modalities=("rgb", "depth"))


# ----- presets and compute ------------------------------------------------------------------------

PUBLISHED = {"wan2.1-t2v-1.3b": 1_418_996_800, "wan2.2-ti2v-5b": 4_999_787_712, "wan2.1-t2v-14b": 14_288_491_584}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_parameter_counts_on_meta(name):
    with torch.device("meta"):
        model = UnityVideoTransformer.from_preset(name)
    counts = model.parameter_counts()
    assert isinstance(model.backbone, WanTransformer3DModel)
    total = counts["backbone"] + counts["added"]
    if name in PUBLISHED:
        assert counts["backbone"] == PUBLISHED[name]
        cfg = model.backbone.config
        assert (cfg.text_dim, cfg.freq_dim, tuple(cfg.patch_size), cfg.cross_attn_norm, cfg.qk_norm) == (
            4096, 256, (1, 2, 2), True, "rms_norm_across_heads")
    elif name == "tiny":
        assert 1e6 <= total <= 5e6
    elif name == "small":
        assert 50e6 <= total <= 150e6


def test_unknown_preset_lists_the_names():
    with pytest.raises(KeyError, match="tiny"):
        UnityVideoTransformer.from_preset("huge")


def test_analytic_flops_match_torch_flop_counter():
    model = tiny()
    streams = [stream("rgb"), stream("depth", seed=1, mask=torch.tensor([[1, 1, 0, 1, 0]] * B).bool())]

    def sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten  # CPU attention kernels have no formula in torch: count them like CUDA's
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa, aten._scaled_dot_product_attention_math: sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        model(streams)
    assert counter.get_total_flops() == forward_flops(dict(model.config), (C, F, H, W), 2, 5, batch=B)


# ----- loading and saving -------------------------------------------------------------------------


def wan_folder(tmp_path, shard="60KB"):
    torch.manual_seed(1)
    wan = WanTransformer3DModel(**{**PRESETS["tiny"], "num_layers": 2})
    folder = tmp_path / "wan"
    wan.save_pretrained(folder, max_shard_size=shard)
    return wan, folder


def test_from_backbone_loads_sharded_wan_and_adds_parts(tmp_path):
    wan, folder = wan_folder(tmp_path)
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").exists()
    model = UnityVideoTransformer.from_backbone(folder, modalities=("depth", "flow"))
    for k, v in wan.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v), k
    assert torch.equal(model.heads["flow"].proj_out.weight, wan.proj_out.weight)
    assert not model.modality_table.any()
    s = stream("rgb")
    with torch.no_grad():
        assert (model([s])[0] - wan(s.latent, 1000 * s.timestep, s.context).sample).abs().max() <= 1e-5


def test_from_backbone_errors_name_the_file_and_the_fix(tmp_path):
    _, folder = wan_folder(tmp_path)
    with pytest.raises(FileNotFoundError, match="no such folder"):
        UnityVideoTransformer.from_backbone(tmp_path / "nope")
    index = json.loads((folder / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (folder / shard).rename(folder / (shard + ".bak"))
    with pytest.raises(FileNotFoundError, match=f"{shard}: missing shard"):
        UnityVideoTransformer.from_backbone(folder)
    (folder / (shard + ".bak")).rename(folder / shard)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "ffn_dim": 256}))
    with pytest.raises(ValueError, match=r"has shape \(512, 128\) but config.json implies \(256, 128\)"):
        UnityVideoTransformer.from_backbone(folder)


def test_save_and_load_round_trip_exactly(tmp_path):
    model = tiny(experts="shared", shared_timestep=True, modalities=("depth", "skeleton"))
    randomize_unity_parts(model)
    model.save_pretrained(tmp_path / "uv")
    loaded = UnityVideoTransformer.from_pretrained(tmp_path / "uv")
    assert json.loads(loaded.to_json_string()) == json.loads(model.to_json_string())
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    streams = [stream("rgb"), stream("skeleton", seed=1)]
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(model(streams), loaded(streams)))
    with pytest.raises(ValueError, match="use from_backbone"):
        UnityVideoTransformer.from_pretrained(wan_folder(tmp_path)[1])


def test_from_pretrained_bf16_keeps_sensitive_parts_fp32(tmp_path):
    tiny().save_pretrained(tmp_path / "uv")
    model = UnityVideoTransformer.from_pretrained(tmp_path / "uv", torch_dtype=torch.bfloat16)
    assert model.backbone.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.modality_table.dtype == torch.float32
    assert model.backbone.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    s = stream("rgb")
    out = model([Stream("rgb", s.latent.bfloat16(), s.timestep, s.context.bfloat16())])[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_single_file_weights_with_a_wrong_tensor_shape(tmp_path):
    tiny().save_pretrained(tmp_path / "uv")
    path = tmp_path / "uv" / "diffusion_pytorch_model.safetensors"
    weights = load_file(path)
    weights["modality_table"] = torch.zeros(3, 128)
    save_file(weights, path)
    with pytest.raises(ValueError, match="modality_table"):
        UnityVideoTransformer.from_pretrained(tmp_path / "uv")


def test_default_modalities_match_the_registry():
    modalities = pytest.importorskip("unityvideo.modalities")
    assert UnityVideoTransformer.from_preset("tiny").config.modalities == tuple(modalities.MODALITY_NAMES)


# ----- condition isolation and the condition cache ------------------------------------------------


def control_streams(seed=0):
    """rgb noisy, depth clean (control)."""
    return [stream("rgb", seed=seed + 1), stream("depth", torch.zeros(B), seed=seed + 2)]


def estimate_streams(seed=0):
    """rgb clean, depth and flow noisy (estimate of two modalities)."""
    return [stream("rgb", torch.zeros(B), seed=seed + 1), stream("depth", seed=seed + 2), stream("flow", seed=seed + 3)]


@pytest.mark.parametrize("task", ["control", "estimate"])
def test_condition_cache_equals_the_uncached_forward(task):
    model = tiny(condition_isolation=True)
    randomize_unity_parts(model)
    streams = control_streams() if task == "control" else estimate_streams()
    clean = [bool((s.timestep == 0).all()) for s in streams]
    with torch.no_grad():
        full = model(streams)
        cache = model.cache_conditions([s.modality if not c else s for s, c in zip(streams, clean)])
        cached = model([s for s, c in zip(streams, clean) if not c], condition_cache=cache)
    expected = [v for v, c in zip(full, clean) if not c]
    assert len(cached) == len(expected)
    for a, b in zip(cached, expected):
        assert (a - b).abs().max().item() <= 1e-5


def test_condition_cache_serves_stacked_cfg_passes():
    """A cache of batch B serves a forward of batch k * B (sample i uses cache row i % B)."""
    model = tiny(condition_isolation=True)
    rgb, depth = control_streams()
    with torch.no_grad():
        cache = model.cache_conditions(["rgb", depth])
        single = model([rgb], condition_cache=cache)[0]
        doubled = Stream("rgb", torch.cat([rgb.latent] * 2), torch.cat([rgb.timestep] * 2),
                         torch.cat([rgb.context] * 2))
        stacked = model([doubled], condition_cache=cache)[0]
    assert (stacked[:B] - single).abs().max() <= 1e-5 and (stacked[B:] - single).abs().max() <= 1e-5


def test_isolated_condition_does_not_see_the_noisy_stream():
    rgb, depth = control_streams()
    other_rgb = stream("rgb", seed=7)
    for isolation in (True, False):
        model = tiny(condition_isolation=isolation)
        with torch.no_grad():
            a, b = model([rgb, depth])[1], model([other_rgb, depth])[1]
        assert ((a - b).abs().max().item() == 0.0) == isolation


def test_per_sample_mask_equals_the_split_when_samples_share_the_pattern(monkeypatch):
    from unityvideo.models.attention import MaskedAttention, SplitAttention

    model = tiny(condition_isolation=True)
    streams = estimate_streams()
    with torch.no_grad():
        split = model(streams)
        assert isinstance(model._isolation_route(streams, 6), SplitAttention)
        monkeypatch.setattr(model, "_isolation_route", lambda s, n: MaskedAttention(
            model._stream_timesteps(s) == 0, n))
        masked = model(streams)
    for a, b in zip(split, masked):
        assert (a - b).abs().max().item() <= 1e-5


def test_mixed_batch_isolates_each_sample_in_training():
    """A training group mixing control (sample 0) and estimate (sample 1): each sample gets its own
    isolation, equal to running it alone, and no gradient flows from a noisy stream into a clean one."""
    model = tiny(condition_isolation=True)
    rgb, depth = stream("rgb", torch.tensor([0.6, 0.0]), seed=1), stream("depth", torch.tensor([0.0, 0.3]), seed=2)
    rgb.latent.requires_grad_(True)
    depth.latent.requires_grad_(True)
    out = model([rgb, depth])
    for i in range(B):
        alone = [Stream(s.modality, s.latent[i:i + 1].detach(), s.timestep[i:i + 1], s.context[i:i + 1])
                 for s in (rgb, depth)]
        with torch.no_grad():
            ref = model(alone)
        assert max((o[i:i + 1] - r).abs().max().item() for o, r in zip(out, ref)) <= 1e-5
    # sample 0: depth is clean, rgb noisy; sample 1: rgb is clean, depth noisy
    grad_rgb, = torch.autograd.grad(out[1][0].sum(), rgb.latent, retain_graph=True)
    grad_depth, = torch.autograd.grad(out[0][1].sum(), depth.latent)
    assert grad_rgb.abs().max() == 0 and grad_depth.abs().max() == 0


def test_condition_cache_needs_the_flag_and_clean_conditions():
    rgb, depth = control_streams()
    with pytest.raises(ValueError, match="condition_isolation=True"):
        tiny().cache_conditions(["rgb", depth])
    with pytest.raises(ValueError, match="shared_timestep"):
        tiny(condition_isolation=True, shared_timestep=True).cache_conditions(["rgb", depth])
    model = tiny(condition_isolation=True)
    with pytest.raises(ValueError, match="clean"):
        model.cache_conditions(["depth", stream("rgb", seed=3)])
    cache = model.cache_conditions(["rgb", depth])
    with pytest.raises(ValueError, match="uncached ones"):
        model([stream("depth")], condition_cache=cache)


def test_isolated_and_cached_flops_match_torch_flop_counter():
    model = tiny(condition_isolation=True)
    streams = estimate_streams()

    def sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa, aten._scaled_dot_product_attention_math: sdpa}
    cfg = dict(model.config)
    with torch.no_grad():
        with FlopCounterMode(display=False, custom_mapping=mapping) as isolated:
            model(streams)
        cache = model.cache_conditions([streams[0], "depth", "flow"])
        with FlopCounterMode(display=False, custom_mapping=mapping) as cached:
            model(streams[1:], condition_cache=cache)
    assert isolated.get_total_flops() == forward_flops(cfg, (C, F, H, W), 3, 5, batch=B, clean_streams=1)
    assert cached.get_total_flops() == forward_flops(cfg, (C, F, H, W), 3, 5, batch=B, clean_streams=1, cached=True)


# ----- a checkpoint's text encoder and VAE folders, after the folder moves ----------------------------


def test_exported_asset_paths_survive_a_move(tmp_path):
    from unityvideo.models.checkpoint import place_asset, resolve_asset

    def export(root, mode):
        (root / "vae").mkdir(parents=True)
        (root / "vae" / "config.json").write_text("{}")
        staging, final = root / "run" / ".export.tmp", root / "run" / "export"
        staging.mkdir(parents=True)
        name = place_asset(str(root / "vae"), staging, final, "vae", mode)
        staging.rename(final)
        return name, final

    name, _ = export(tmp_path / "a", "reference")
    assert name == "../../vae"  # relative to the checkpoint, not to the working directory
    shutil.move(tmp_path / "a", tmp_path / "moved")  # the whole tree moves: still found
    assert resolve_asset(tmp_path / "moved" / "run" / "export", name, "VAE") == str(tmp_path / "moved" / "run" / "export" / name)
    shutil.move(tmp_path / "moved" / "run" / "export", tmp_path / "alone")  # the checkpoint alone: a clear error
    with pytest.raises(FileNotFoundError, match=r"alone/unityvideo.json: the VAE '../../vae' is not there.*export_assets=copy"):
        resolve_asset(tmp_path / "alone", name, "VAE")
    for mode in ("copy", "link"):
        name, final = export(tmp_path / mode, mode)
        assert name == "vae" and (final / "vae" / "config.json").is_file()
        assert (final / "vae").is_symlink() == (mode == "link")
    shutil.move(tmp_path / "copy" / "run" / "export", tmp_path / "copied")
    assert resolve_asset(tmp_path / "copied", "vae", "VAE") == str(tmp_path / "copied" / "vae")
    assert resolve_asset(tmp_path, "minilm", "text encoder") == "minilm"


# ----- Wan's text convention through the real text paths ------------------------------------------------


def test_a_wan_backbone_with_umt5_is_wan_through_the_trainer_and_pipeline_text_paths(tmp_path):
    """umT5 features zero-padded to 512 and attended with no mask (Wan's and WanPipeline's convention):
    the single-RGB-stream forward of from_backbone equals WanTransformer3DModel, with the features the
    trainer's TextBank and the pipeline hand the model. The masked convention is not Wan."""
    from test_text import tiny_umt5_folder

    from unityvideo.models import PixelCodec, load_text_encoder
    from unityvideo.models.checkpoint import CheckpointSpec
    from unityvideo.pipeline import UnityVideoPipeline, plan_streams
    from unityvideo.training.data import TextBank

    encoder = load_text_encoder(str(tiny_umt5_folder(tmp_path / "umt5")))
    assert encoder.convention == "zero_padded"
    torch.manual_seed(1)
    wan = WanTransformer3DModel(**{**PRESETS["tiny"], "num_layers": 2, "text_dim": encoder.dim}).eval()
    wan.save_pretrained(tmp_path / "wan")
    model = UnityVideoTransformer.from_backbone(tmp_path / "wan", modalities=("depth",)).eval()
    captions = ["a ball rolls", "a person in a red shirt jumps over a box"]
    reference_text = encoder.encode(captions)[0]  # WanPipeline: umT5 features, zeros to 512
    latent, t = torch.randn(2, 48, 2, 4, 4), torch.tensor([0.3, 0.8])
    bank = TextBank(encoder, torch.device("cpu"))
    bank.warm(captions)
    pipe = UnityVideoPipeline(model, encoder, PixelCodec(4), spec=CheckpointSpec(text_convention="zero_padded"))
    paths = {"trainer": bank(captions),
             "pipeline": pipe._contexts(plan_streams("t2v"), captions, ["", ""], False)["rgb"]["cond"]}
    with torch.no_grad():
        expected = wan(latent, 1000 * t, reference_text).sample
        for where, (context, mask) in paths.items():
            assert context.shape == (2, 512, encoder.dim) and mask is None, where
            got = model([Stream("rgb", latent, t, context, mask)])[0]
            assert (got - expected).abs().max() <= 1e-5, where
        masked, mask = encoder.model_inputs(captions, convention="masked")
        assert (model([Stream("rgb", latent, t, masked, mask)])[0] - expected).abs().max() > 1e-3
