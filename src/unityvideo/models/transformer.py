"""UnityVideo transformer: any number of streams (RGB + visual modalities) through one Wan backbone.

The backbone is diffusers' `WanTransformer3DModel`, used as is: its patch embedding, timestep and text
embedders, 3D RoPE, blocks (self-attention, cross-attention, FFN, norms) and output layer, with Wan's
weight names. UnityVideo adds four things, each a few lines below:

- per-stream timesteps: every stream is modulated by its own timestep (a clean condition has t = 0);
- a modality-aware AdaLN table: L_m is added to the stream's timestep embedding before the modulation
  MLP, so (shift, scale, gate) = MLP(L_m + t_emb); zero-initialised, so the backbone is unchanged;
- an in-context learner: each stream cross-attends to its own context (caption for RGB, modality prompt
  for the others) through the block's shared cross-attention weights;
- modality experts: each modality has its own patch embedding and output head, copied from the RGB ones.

Layout: streams sit side by side in width for RoPE (stream s gets width positions offset by s * W) and
are concatenated along the sequence in memory, so a stream is a slice of (B, S * N, D), and per-stream
modulation / cross-attention are a reshape to (B, S, N, D) or (B * S, N, D). With a single RGB stream
the forward is exactly the backbone's forward.

Condition isolation (config `condition_isolation`, off by default): clean condition streams (t = 0)
attend only to clean streams, while noisy streams attend to everything. A clean stream's tokens then
never depend on the noisy ones, so at inference its per-layer keys and values can be computed once
(`cache_conditions`) and reused by every denoising step (`forward(streams, condition_cache=...)`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
from diffusers import ConfigMixin, ModelMixin, WanTransformer3DModel
from diffusers.configuration_utils import register_to_config
from diffusers.models.normalization import FP32LayerNorm
from diffusers.models.transformers.transformer_wan import WanRotaryPosEmbed, WanTransformerBlock

from ..modalities import MODALITY_NAMES
from .attention import (AttentionRoute, CachedAttention, ConditionCache, MaskedAttention, RecordingAttention,
                        SplitAttention, StreamAttnProcessor)
from .weights import copy_weights, keep_fp32, load_weights, model_folder, read_config

RGB = "rgb"
DEFAULT_MODALITIES = MODALITY_NAMES
EXPERT_MODES = ("per_modality", "shared", "none")
TIMESTEP_SCALE = 1000.0  # Wan's embedder expects timesteps in [0, 1000]

# Wan's backbone arguments that a UnityVideo config carries (the rest of Wan's config, I2V image
# embeddings, is not supported).
BACKBONE_KEYS = (
    "patch_size", "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "text_dim",
    "freq_dim", "ffn_dim", "num_layers", "cross_attn_norm", "qk_norm", "eps", "rope_max_seq_len",
)

STREAM_POSITIONS = ("side_by_side", "shared")
ATTENTION_INITS = ("default", "local")
PRESETS: dict[str, dict] = {
    # 16-frame 64x64 world clips through the 4x4 pixel codec (48 channels); MiniLM text (384-d).
    "tiny": dict(num_attention_heads=4, attention_head_dim=32, ffn_dim=512, num_layers=4,
                 in_channels=48, text_dim=384, freq_dim=64),
    # One GPU, about an hour on world clips; same codec and text encoder as tiny.
    "small": dict(num_attention_heads=8, attention_head_dim=64, ffn_dim=2048, num_layers=16,
                  in_channels=48, text_dim=384),
    # Published Wan shapes (head dim 128, text_dim 4096 umT5, freq_dim 256 are the defaults).
    "wan2.1-t2v-1.3b": dict(num_attention_heads=12, ffn_dim=8960, num_layers=30, in_channels=16),
    "wan2.2-ti2v-5b": dict(num_attention_heads=24, ffn_dim=14336, num_layers=30, in_channels=48),
    "wan2.1-t2v-14b": dict(num_attention_heads=40, ffn_dim=13824, num_layers=40, in_channels=16),
}
# The latent codec each preset is meant for (see unityvideo.models.codec.CODEC_GEOMETRY).
PRESET_CODECS = {"tiny": "pixel4", "small": "pixel4", "wan2.1-t2v-1.3b": "wan2.1",
                 "wan2.2-ti2v-5b": "wan2.2", "wan2.1-t2v-14b": "wan2.1"}


@dataclass
class Stream:
    """One stream of a UnityVideo forward.

    modality: "rgb" or one of the model's modalities.
    latent: (B, C, F, H, W); all streams of a call share B, F, H, W.
    timestep: (B,) or a float, in [0, 1]; 1 = pure noise, 0 = clean (a condition).
    context: (B, L, text_dim) text-encoder features: the caption for rgb, the modality prompt otherwise.
    context_mask: (B, L) bool, True = a real token; None attends to all L tokens (Wan's convention:
        umT5 features zero-padded to 512 and no mask).
    """

    modality: str
    latent: torch.Tensor
    timestep: torch.Tensor | float
    context: torch.Tensor
    context_mask: torch.Tensor | None = None


class OutputHead(nn.Module):
    """Wan's output layer (norm_out, (shift, scale) table, proj_out): one copy per modality expert."""

    def __init__(self, dim: int, out_features: int, eps: float):
        super().__init__()
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.proj_out = nn.Linear(dim, out_features)


def apply_head(head: nn.Module, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
    """Wan's final layer on tokens x (B, N, D) with timestep embedding temb (B, D)."""
    shift, scale = (head.scale_shift_table + temb.unsqueeze(1)).chunk(2, dim=1)
    x = (head.norm_out(x.float()) * (1 + scale) + shift).type_as(x)
    return head.proj_out(x)


def stream_block(
    block: WanTransformerBlock,
    x: torch.Tensor,
    context: torch.Tensor,
    context_mask: torch.Tensor | None,
    modulation: torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor],
    route: AttentionRoute | None = None,
) -> torch.Tensor:
    """One Wan block over S streams of N tokens each, x: (B, S * N, D).

    Self-attention is joint over all tokens (route: who attends to whom under condition isolation, see
    `StreamAttnProcessor`); each stream is modulated by its own (shift, scale, gate)
    (modulation: (B, S, 6, D)) and cross-attends to its own context (context: (B * S, L, D)) with the
    block's shared weights. Same arithmetic as `WanTransformerBlock.forward`, so S = 1 is exact.
    """
    batch, num_streams = modulation.shape[:2]

    def per_stream(h):  # (B, S * N, D) -> (B, S, N, D)
        return h.unflatten(1, (num_streams, -1))

    params = (block.scale_shift_table.unsqueeze(0) + modulation.float()).unsqueeze(3)
    shift_msa, scale_msa, gate_msa, c_shift_msa, c_scale_msa, c_gate_msa = params.unbind(2)  # (B, S, 1, D)

    h = (per_stream(block.norm1(x.float())) * (1 + scale_msa) + shift_msa).flatten(1, 2).type_as(x)
    # Called through attn1 (not its sub-modules) so FSDP2's hooks on attn1 still gather its weights.
    attn = block.attn1(h, None, None, rope) if route is None else block.attn1(h, None, None, rope, route=route)
    x = (per_stream(x.float()) + per_stream(attn) * gate_msa).flatten(1, 2).type_as(x)

    # Streams folded into the batch: one cross-attention call, each stream with its own context.
    h = block.norm2(x.float()).type_as(x).reshape(batch * num_streams, -1, x.shape[-1])
    x = x + block.attn2(h, context, context_mask, None).reshape(x.shape)

    h = (per_stream(block.norm3(x.float())) * (1 + c_scale_msa) + c_shift_msa).flatten(1, 2).type_as(x)
    ff = block.ffn(h)
    return (per_stream(x.float()) + per_stream(ff.float()) * c_gate_msa).flatten(1, 2).type_as(x)


@torch.no_grad()
def local_attention_init(backbone: WanTransformer3DModel, bias: float = 1.0, gain: float = 3.0,
                         weight_scale: float = 0.1) -> None:
    """Start every self-attention as a positional kernel peaked at zero RoPE offset.

    Query and key become nearly the same constant vector (a bias that dominates shrunken weights), so
    a logit is the RoPE kernel sum_f cos(w_f * offset), largest at offset 0; the qk-norm gain sharpens
    it. With `stream_positions="shared"` the token at offset 0 in another stream is the pixel-aligned
    one, so a condition stream reaches the target from the first step. A model trained from scratch
    with Wan's default init has to discover that lookup: on the world, a tiny model did not learn to
    use its condition in 600 steps, and did not learn to copy a per-token random stream in 300, which
    it learns in about 100 with this init and shared positions (docs/training.md).
    """
    for block in backbone.blocks:
        attn = block.attn1
        for linear in (attn.to_q, attn.to_k):
            linear.weight.mul_(weight_scale)
            linear.bias.fill_(bias)
        attn.norm_q.weight.fill_(gain)
        attn.norm_k.weight.fill_(gain)


class UnityVideoTransformer(ModelMixin, ConfigMixin):
    """N-stream UnityVideo DiT on a Wan backbone (`self.backbone`, a `WanTransformer3DModel`).

    Config (beyond Wan's): `modalities` (RGB is always present), and the ablation switches
    `adaln_table` (modality-aware AdaLN table), `in_context` (False: every stream sees the RGB
    stream's caption), `experts` ("per_modality", "shared": one expert for all modalities as in the
    authors' code, "none": the RGB patch embedding and head for all), `shared_timestep` (every stream
    gets the largest timestep of its sample, i.e. the noisy stream's, as in the authors' code),
    `stream_positions` ("side_by_side": stream s gets RoPE width positions offset by s * W, the
    paper's layout; "shared": every stream reuses the same positions, so pixel-aligned tokens of two
    streams have zero relative rotation), `rope_theta` (RoPE base; Wan's is 10000, made for grids of
    hundreds of patches; a small grid uses only a few of its frequencies), `attention_init` ("local":
    self-attention starts as a sharp kernel around each token's own position, see
    `local_attention_init`; for models trained from scratch), `condition_isolation` (clean streams, t = 0, attend only to
    clean streams; enables the inference-time condition cache, `cache_conditions`).
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["WanTransformerBlock"]

    @register_to_config
    def __init__(
        self,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        adaln_table: bool = True,
        in_context: bool = True,
        experts: str = "per_modality",
        shared_timestep: bool = False,
        stream_positions: str = "side_by_side",
        rope_theta: float = 10000.0,
        attention_init: str = "default",
        condition_isolation: bool = False,
        patch_size: Sequence[int] = (1, 2, 2),
        num_attention_heads: int = 40,
        attention_head_dim: int = 128,
        in_channels: int = 16,
        out_channels: int | None = None,
        text_dim: int = 4096,
        freq_dim: int = 256,
        ffn_dim: int = 13824,
        num_layers: int = 40,
        cross_attn_norm: bool = True,
        qk_norm: str | None = "rms_norm_across_heads",
        eps: float = 1e-6,
        rope_max_seq_len: int = 1024,
    ):
        super().__init__()
        modalities = tuple(modalities)
        _check_modalities(modalities, experts)
        if attention_init not in ATTENTION_INITS:
            raise ValueError(f"attention_init={attention_init!r}; choose one of {ATTENTION_INITS}")
        if stream_positions not in STREAM_POSITIONS:
            raise ValueError(f"stream_positions={stream_positions!r}; choose one of {STREAM_POSITIONS}")
        self.backbone = WanTransformer3DModel(
            patch_size=tuple(patch_size), num_attention_heads=num_attention_heads,
            attention_head_dim=attention_head_dim, in_channels=in_channels,
            out_channels=out_channels or in_channels, text_dim=text_dim, freq_dim=freq_dim, ffn_dim=ffn_dim,
            num_layers=num_layers, cross_attn_norm=cross_attn_norm, qk_norm=qk_norm, eps=eps,
            rope_max_seq_len=rope_max_seq_len,
        )
        if rope_theta != 10000.0:
            self.backbone.rope = _rope(self.config)
        if attention_init == "local":
            local_attention_init(self.backbone)
        dim = num_attention_heads * attention_head_dim
        self.stream_names = (RGB,) + modalities
        self.modality_table = nn.Parameter(torch.zeros(len(self.stream_names), dim)) if adaln_table else None
        keys = _expert_keys(modalities, experts)
        self.patch_embedders = nn.ModuleDict({k: copy.deepcopy(self.backbone.patch_embedding) for k in keys})
        out_features = self.backbone.proj_out.out_features
        self.heads = nn.ModuleDict({k: OutputHead(dim, out_features, eps) for k in keys})
        self.init_unity_parameters()
        self.gradient_checkpointing = False
        self.checkpoint_every = 1  # activation checkpointing policy: every k-th block (1 = all blocks)
        for block in self.backbone.blocks:  # Wan's processor plus routes for condition isolation
            block.attn1.set_processor(StreamAttnProcessor())
        self._block_fn = stream_block

    def compile_blocks(self, **compile_kwargs) -> None:
        """torch.compile the per-block function (`stream_block`), once for all blocks; the block loop,
        routing decisions and heads stay eager. kwargs go to torch.compile (e.g. mode, backend)."""
        self._block_fn = torch.compile(stream_block, **compile_kwargs)

    # ----- construction -------------------------------------------------------------------------

    @torch.no_grad()
    def init_unity_parameters(self) -> None:
        """Zero the AdaLN table and copy the RGB patch embedding / head into every modality expert."""
        if self.modality_table is not None:
            self.modality_table.zero_()
        for embedder in self.patch_embedders.values():
            embedder.load_state_dict(self.backbone.patch_embedding.state_dict())
        for head in self.heads.values():
            head.scale_shift_table.copy_(self.backbone.scale_shift_table)
            head.proj_out.load_state_dict(self.backbone.proj_out.state_dict())

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "UnityVideoTransformer":
        """A model with a named size (see PRESETS), e.g. `from_preset("tiny", num_layers=2)`."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], **overrides})

    @classmethod
    def from_backbone(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                      **unity_config) -> "UnityVideoTransformer":
        """Load a local Wan transformer and add the UnityVideo parts: a diffusers folder (config.json +
        safetensors, sharded or not; a pipeline folder with a `transformer/` subfolder also works), or
        Wan's original format (one .safetensors file, or a folder of them with Wan's config.json:
        names mapped by diffusers' Wan key map, the head count from config.json or width / 128)."""
        from .convert import is_original_wan_path, load_original_wan

        if is_original_wan_path(Path(folder)):
            config, state = load_original_wan(folder, unity_config.pop("num_attention_heads", None))
            model = _empty_model(cls, {**config, **unity_config}, torch_dtype)
            copy_weights(model.backbone, state, str(folder))
            model.init_unity_parameters()
            return model
        folder = model_folder(folder, subfolder="transformer")
        wan_config = read_config(folder)
        if wan_config.get("_class_name") not in (None, "WanTransformer3DModel"):
            raise ValueError(f"{folder / 'config.json'}: _class_name is {wan_config['_class_name']!r}, expected "
                             "'WanTransformer3DModel' (for a saved UnityVideo model use from_pretrained)")
        for key in ("image_dim", "added_kv_proj_dim", "pos_embed_seq_len"):
            if wan_config.get(key) is not None:
                raise ValueError(f"{folder / 'config.json'}: {key}={wan_config[key]} is an image-to-video Wan "
                                 "backbone; UnityVideo builds on the text-to-video transformers (T2V, TI2V)")
        config = {k: wan_config[k] for k in BACKBONE_KEYS if k in wan_config}
        model = _empty_model(cls, {**config, **unity_config}, torch_dtype)
        load_weights(model.backbone, folder)
        model.init_unity_parameters()
        return model

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        subfolder: str | None = None, **kwargs) -> "UnityVideoTransformer":
        """Load a model written by `save_pretrained` (config.json + safetensors)."""
        if kwargs:
            raise TypeError(f"from_pretrained got unsupported arguments {sorted(kwargs)}; "
                            "it takes a local folder, torch_dtype and subfolder")
        folder = model_folder(Path(folder) / subfolder if subfolder else folder)
        config = read_config(folder)
        if config.get("_class_name") != cls.__name__:
            is_wan = config.get("_class_name") == "WanTransformer3DModel"
            hint = " (a Wan backbone: use from_backbone)" if is_wan else ""
            raise ValueError(f"{folder / 'config.json'}: _class_name is {config.get('_class_name')!r}, "
                             f"expected {cls.__name__!r}{hint}")
        model = _empty_model(cls, {k: v for k, v in config.items() if not k.startswith("_")}, torch_dtype)
        load_weights(model, folder)
        return model

    def parameter_counts(self) -> dict[str, int]:
        """Parameters of the Wan backbone and of the UnityVideo additions."""
        backbone = sum(p.numel() for p in self.backbone.parameters())
        return {"backbone": backbone, "added": sum(p.numel() for p in self.parameters()) - backbone}

    # ----- forward ------------------------------------------------------------------------------

    def forward(self, streams: Sequence[Stream], condition_cache: ConditionCache | None = None) -> list[torch.Tensor]:
        """Velocity for each stream, same shape as its latent (out_channels channels).

        condition_cache: from `cache_conditions`; `streams` are then only the layout's uncached streams
        (the noisy ones, in order), each attending to its own keys and the cached ones, and only their
        velocities are returned.
        """
        self._check_streams(streams)
        grid = self._grid(streams[0].latent)
        if condition_cache is None:
            slots, num_slots = list(range(len(streams))), len(streams)
            routes = [self._isolation_route(streams, math.prod(grid))] * len(self.backbone.blocks)
        else:
            condition_cache.check(streams, grid)
            slots = [i for i, c in enumerate(condition_cache.cached) if not c]
            num_slots = len(condition_cache.layout)
            routes = [CachedAttention(k, v, condition_cache.cached)
                      for k, v in zip(condition_cache.keys, condition_cache.values)]
        tokens, temb = self._run_blocks(streams, grid, slots, num_slots, routes)
        return [self._unpatchify(apply_head(self._head(s.modality), tokens[:, i], temb[:, i]), grid)
                for i, s in enumerate(streams)]

    @torch.no_grad()
    def cache_conditions(self, layout: Sequence[Stream | str]) -> ConditionCache:
        """Run the clean condition streams once and keep every layer's self-attention keys and values.

        layout: every stream in model order; a Stream is a clean condition (timestep 0) to cache, a
        string the modality of a stream that each step will give, e.g. for control
        `cache = model.cache_conditions(["rgb", Stream("depth", depth, 0.0, prompt)])`, then
        `model([Stream("rgb", x_t, t, caption)], condition_cache=cache)` at every step.
        """
        conditions = [s for s in layout if isinstance(s, Stream)]
        self._check_cacheable(layout, conditions)
        grid = self._grid(conditions[0].latent)
        recorder = RecordingAttention()
        slots = [i for i, s in enumerate(layout) if isinstance(s, Stream)]
        self._run_blocks(conditions, grid, slots, len(layout), [recorder] * len(self.backbone.blocks))
        return ConditionCache(layout=tuple(s.modality if isinstance(s, Stream) else s for s in layout),
                              cached=tuple(isinstance(s, Stream) for s in layout), grid=grid,
                              keys=recorder.keys, values=recorder.values)

    def _run_blocks(self, streams: Sequence[Stream], grid: tuple[int, int, int], slots: Sequence[int],
                    num_slots: int, routes: Sequence[AttentionRoute | None]) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed the streams (at layout positions `slots` of `num_slots`) and run every block.
        Returns tokens (B, S, N, D) and the timestep embeddings (B, S, D)."""
        x = torch.cat([self._embed(s) for s in streams], dim=1)  # (B, S * N, D)
        rope = self._stream_rope(num_slots, grid, slots)
        context, context_mask = self._contexts(streams)
        temb = self._timestep_embeddings(streams, dtype=context.dtype)  # (B, S, D)
        embedder = self.backbone.condition_embedder
        modulation = embedder.time_proj(embedder.act_fn(temb)).unflatten(2, (6, -1))  # (B, S, 6, D)

        for i, (block, route) in enumerate(zip(self.backbone.blocks, routes)):
            args = (block, x, context, context_mask, modulation, rope, route)
            if torch.is_grad_enabled() and self.gradient_checkpointing and i % self.checkpoint_every == 0:
                x = self._gradient_checkpointing_func(self._block_fn, *args)
            else:
                x = self._block_fn(*args)
        return x.unflatten(1, (len(streams), -1)), temb

    def _isolation_route(self, streams: Sequence[Stream], tokens_per_stream: int) -> AttentionRoute | None:
        """None (every token attends to every token) unless condition_isolation is on and some stream
        is clean; then a split when all samples share one clean pattern, else a per-sample mask."""
        if not self.config.condition_isolation:
            return None
        clean = self._stream_timesteps(streams) == 0  # (B, S), before shared_timestep rewrites it
        if bool((clean == clean[:1]).all()):
            if not bool(clean[0].any()) or bool(clean[0].all()):
                return None  # nothing clean, or nothing noisy to hide from
            return SplitAttention(clean[0].tolist(), tokens_per_stream, clean.device)
        return MaskedAttention(clean, tokens_per_stream)

    def _check_cacheable(self, layout: Sequence[Stream | str], conditions: Sequence[Stream]) -> None:
        cfg = self.config
        if not cfg.condition_isolation:
            raise ValueError("cache_conditions needs a model trained with condition_isolation=True: without it "
                             "clean condition streams attend to the noisy ones, so their keys change every step")
        if cfg.shared_timestep:
            raise ValueError("cache_conditions: shared_timestep=True gives condition streams the noisy stream's "
                             "timestep, so their keys change every step; use a model with shared_timestep=False")
        if not cfg.in_context:
            raise ValueError("cache_conditions: the in_context=False ablation gives every stream the RGB caption, "
                             "which the cached streams would not see; use a model with in_context=True")
        if not conditions or len(conditions) == len(layout):
            raise ValueError("cache_conditions: the layout needs at least one condition Stream to cache and "
                             "one modality name (a stream given at each step)")
        self._check_streams(conditions)
        if not bool((self._stream_timesteps(conditions) == 0).all()):
            raise ValueError("cache_conditions: condition streams must be clean (timestep 0 for every sample)")

    def _expert_key(self, modality: str) -> str | None:
        """Which expert a stream uses: None = the backbone's (RGB) patch embedding and head."""
        if modality == RGB or self.config.experts == "none":
            return None
        return "shared" if self.config.experts == "shared" else modality

    def _embed(self, stream: Stream) -> torch.Tensor:
        """Patchify a stream's latent with its expert: (B, C, F, H, W) -> (B, N, D)."""
        key = self._expert_key(stream.modality)
        conv = self.backbone.patch_embedding if key is None else self.patch_embedders[key]
        return conv(stream.latent).flatten(2).transpose(1, 2)

    def _head(self, modality: str) -> nn.Module:
        key = self._expert_key(modality)
        return self.backbone if key is None else self.heads[key]

    def _grid(self, latent: torch.Tensor) -> tuple[int, int, int]:
        """Latent patches (F, H, W) of one stream."""
        return tuple(n // p for n, p in zip(latent.shape[2:], self.config.patch_size))

    def _stream_rope(self, num_streams: int, grid: tuple[int, int, int], slots: Sequence[int] | None = None):
        """Wan's 3D RoPE for the streams at layout positions `slots` (default: all) of S streams."""
        cos, sin = self._layout_rope(num_streams, grid)
        if slots is None or list(slots) == list(range(num_streams)):
            return cos, sin
        return tuple(f.unflatten(1, (num_streams, -1))[:, list(slots)].flatten(1, 2) for f in (cos, sin))

    def _layout_rope(self, num_streams: int, grid: tuple[int, int, int]):
        """Wan's 3D RoPE for S streams, stream-major: side by side in width, or shared positions."""
        pf, ph, pw = grid
        canvas_streams = num_streams if self.config.stream_positions == "side_by_side" else 1
        if canvas_streams * pw > self.config.rope_max_seq_len:
            raise ValueError(f"{num_streams} streams x {pw} latent patches wide exceed rope_max_seq_len="
                             f"{self.config.rope_max_seq_len}; use fewer streams or a larger rope_max_seq_len")
        p_t, p_h, p_w = self.config.patch_size
        canvas = torch.empty(1, 1, pf * p_t, ph * p_h, canvas_streams * pw * p_w, device="meta")  # shape only
        cos, sin = self.backbone.rope(canvas)  # (1, F * H * S * W, 1, d), width-major within a row
        if canvas_streams == 1:
            return cos.repeat(1, num_streams, 1, 1), sin.repeat(1, num_streams, 1, 1)

        def stream_major(freqs):
            return freqs.view(pf, ph, num_streams, pw, -1).permute(2, 0, 1, 3, 4).reshape(1, -1, 1, freqs.shape[-1])

        return stream_major(cos), stream_major(sin)

    @staticmethod
    def _stream_timesteps(streams: Sequence[Stream]) -> torch.Tensor:
        """(B, S) float32 timesteps in [0, 1], as given."""
        batch = streams[0].latent.shape[0]
        device = streams[0].latent.device
        return torch.stack([torch.as_tensor(s.timestep, device=device, dtype=torch.float32).reshape(-1).expand(batch)
                            for s in streams], dim=1)

    def _timestep_embeddings(self, streams: Sequence[Stream], dtype: torch.dtype) -> torch.Tensor:
        """t_emb + L_m per stream, (B, S, D). The model sees 1000 * t (Wan's convention)."""
        t = self._stream_timesteps(streams)  # (B, S)
        if self.config.shared_timestep:
            t = t.amax(dim=1, keepdim=True).expand_as(t)
        embedder = self.backbone.condition_embedder
        sinusoid = embedder.timesteps_proj(TIMESTEP_SCALE * t.flatten())
        time_dtype = next(embedder.time_embedder.parameters()).dtype
        temb = embedder.time_embedder(sinusoid.to(time_dtype)).to(dtype)
        temb = temb.unflatten(0, t.shape)
        if self.modality_table is not None:
            rows = [self.stream_names.index(s.modality) for s in streams]
            temb = temb + self.modality_table[rows].to(temb.dtype)
        return temb

    def _contexts(self, streams: Sequence[Stream]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each stream's projected context, padded to a common length and folded into the batch:
        (B * S, L, D), and a key mask (B * S, 1, 1, L) or None when every token is attended."""
        if self.config.in_context:
            pairs = [(s.context, s.context_mask) for s in streams]
        else:  # ablation: every stream sees the caption
            caption = next((s for s in streams if s.modality == RGB), streams[0])
            pairs = [(caption.context, caption.context_mask)] * len(streams)
        length = max(c.shape[1] for c, _ in pairs)
        needs_mask = any(m is not None or c.shape[1] < length for c, m in pairs)
        context = torch.stack([nn.functional.pad(c, (0, 0, 0, length - c.shape[1])) for c, _ in pairs], dim=1)
        context = self.backbone.condition_embedder.text_embedder(context.flatten(0, 1))
        if not needs_mask:
            return context, None
        mask = torch.stack([_padded_mask(c, m, length) for c, m in pairs], dim=1).flatten(0, 1)
        if bool(mask.all()):  # nothing hidden: no mask, so the attention backend may use flash kernels
            return context, None
        if not bool(mask.any(dim=1).all()):
            raise ValueError("a context_mask row has no True entry (no token to attend to); an empty caption "
                             "still has special tokens, so keep them in the mask")
        return context, mask[:, None, None, :]

    def _unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """(B, N, p_t * p_h * p_w * C) -> (B, C, F, H, W), Wan's token order."""
        pf, ph, pw = grid
        x = tokens.reshape(tokens.shape[0], pf, ph, pw, *self.config.patch_size, -1)
        return x.permute(0, 7, 1, 4, 2, 5, 3, 6).flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def _check_streams(self, streams: Sequence[Stream]) -> None:
        if len(streams) == 0:
            raise ValueError("forward needs at least one stream (rgb alone is text-to-video)")
        shape = streams[0].latent.shape
        for i, s in enumerate(streams):
            where = f"stream {i} ({s.modality!r})"
            if s.modality not in self.stream_names:
                raise ValueError(f"{where}: unknown modality; this model has {list(self.stream_names)} "
                                 "(set `modalities` in the config)")
            if s.latent.ndim != 5 or s.latent.shape[1] != self.config.in_channels:
                raise ValueError(f"{where}: latent must be (B, {self.config.in_channels}, F, H, W), "
                                 f"got {tuple(s.latent.shape)}")
            if s.latent.shape[0] != shape[0] or s.latent.shape[2:] != shape[2:]:
                raise ValueError(f"{where}: latent {tuple(s.latent.shape)} differs from stream 0 "
                                 f"{tuple(shape)} in batch or (F, H, W); streams share one grid")
            if any(n % p for n, p in zip(shape[2:], self.config.patch_size)):
                raise ValueError(f"{where}: latent (F, H, W) = {tuple(shape[2:])} is not divisible by "
                                 f"patch_size {tuple(self.config.patch_size)}")
            if s.context.ndim != 3 or s.context.shape[0] != shape[0] or s.context.shape[2] != self.config.text_dim:
                raise ValueError(f"{where}: context must be (B={shape[0]}, L, text_dim={self.config.text_dim}), "
                                 f"got {tuple(s.context.shape)}; text_dim must equal the text encoder's dim")
            t = torch.as_tensor(s.timestep)
            if t.numel() != 1 and tuple(t.shape) != (shape[0],):
                raise ValueError(f"{where}: timestep must be a float or shape (B,) = ({shape[0]},), "
                                 f"got {tuple(t.shape)}")
            if s.context_mask is not None and s.context_mask.shape != s.context.shape[:2]:
                raise ValueError(f"{where}: context_mask {tuple(s.context_mask.shape)} must be (B, L) = "
                                 f"{tuple(s.context.shape[:2])}")


def _padded_mask(context: torch.Tensor, mask: torch.Tensor | None, length: int) -> torch.Tensor:
    """(B, length) bool: the stream's mask (all True if None), False on the padding."""
    if mask is None:
        mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    return nn.functional.pad(mask.bool(), (0, length - mask.shape[1]), value=False)


def _check_modalities(modalities: tuple[str, ...], experts: str) -> None:
    if experts not in EXPERT_MODES:
        raise ValueError(f"experts={experts!r}; choose one of {EXPERT_MODES}")
    if RGB in modalities:
        raise ValueError(f"modalities={modalities}: 'rgb' is always present, list only the others")
    if len(set(modalities)) != len(modalities):
        raise ValueError(f"modalities={modalities} has duplicates")


def _expert_keys(modalities: tuple[str, ...], experts: str) -> tuple[str, ...]:
    return {"per_modality": modalities, "shared": ("shared",) if modalities else (), "none": ()}[experts]


# ----- building an empty model (weights come from files, models/weights.py) ---------------------


def _empty_model(cls, config: dict, dtype: torch.dtype | None) -> UnityVideoTransformer:
    """Build on the meta device, then allocate uninitialised storage (the weights come from files)."""
    unknown = set(config) - set(BACKBONE_KEYS) - {"modalities", "adaln_table", "in_context", "experts",
                                                  "shared_timestep", "stream_positions", "condition_isolation",
                                                  "rope_theta", "attention_init"}
    if unknown:
        raise ValueError(f"config has unknown fields {sorted(unknown)}")
    with torch.device("meta"):
        model = cls(**config)
    if dtype not in (None, torch.float32):  # parameters are created in fp32
        model = model.to(dtype)
        keep_fp32(model)
    model = model.to_empty(device="cpu")
    cfg = model.config  # RoPE tables are non-persistent buffers: recompute them
    model.backbone.rope = _rope(cfg)
    return model


def _rope(config) -> WanRotaryPosEmbed:
    return WanRotaryPosEmbed(config.attention_head_dim, tuple(config.patch_size), config.rope_max_seq_len,
                             theta=config.rope_theta)
