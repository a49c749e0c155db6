"""The analytic FLOP count of a forward (what MFU figures are measured against)."""

from __future__ import annotations

import inspect
import math
from typing import Sequence

from .transformer import UnityVideoTransformer

def forward_flops(config: dict, latent_shape: Sequence[int], num_streams: int, context_len: int,
                  batch: int = 1, clean_streams: int = 0, cached: bool = False) -> int:
    """Matmul FLOPs (2 per multiply-add) of one forward, counted from the config.

    latent_shape: (C, F, H, W) of each stream. Counts every Linear / Conv3d / attention product; the
    elementwise work (norms, modulation, RoPE) is left out, as torch's FlopCounterMode does.
    clean_streams: how many of the streams are clean conditions under `condition_isolation` (their
    queries see only the clean keys). cached: those streams come from a ConditionCache, so only the
    other streams are computed, their queries over all keys (the cache's one-time build is a forward
    of the clean streams alone).
    """
    cfg = {**_init_defaults(), **config}
    dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    channels, frames, height, width = latent_shape
    patch = math.prod(cfg["patch_size"])
    out = (cfg["out_channels"] or cfg["in_channels"]) * patch
    per_stream = frames * height * width // patch
    all_tokens, clean_tokens = num_streams * per_stream, clean_streams * per_stream
    computed_streams = num_streams - clean_streams if cached else num_streams
    tokens = computed_streams * per_stream  # tokens projected, queried and fed through the FFN
    contexts = computed_streams * context_len  # context tokens, one context per stream
    t_rows = computed_streams  # timestep embeddings (one per stream)
    # (query, key) pairs of self-attention: noisy queries see every key; clean ones only the clean keys
    pairs = (all_tokens - clean_tokens) * all_tokens + (0 if cached else clean_tokens * clean_tokens)

    macs = tokens * channels * patch * dim  # patch embedding
    macs += contexts * (cfg["text_dim"] * dim + dim * dim)  # text_embedder (2 layers)
    macs += t_rows * (cfg["freq_dim"] * dim + dim * dim + dim * 6 * dim)  # time_embedder + time_proj
    per_block = 4 * tokens * dim * dim  # self-attention q, k, v, o
    per_block += 2 * pairs * dim  # QK^T and AV
    per_block += 2 * tokens * dim * dim + 2 * contexts * dim * dim  # cross-attention q, o and k, v
    per_block += 2 * tokens * context_len * dim  # cross-attention QK^T and AV, per stream
    per_block += 2 * tokens * dim * cfg["ffn_dim"]  # FFN
    macs += cfg["num_layers"] * per_block
    macs += tokens * dim * out  # proj_out
    return 2 * batch * macs


def _init_defaults() -> dict:
    params = inspect.signature(UnityVideoTransformer.__init__).parameters
    return {k: p.default for k, p in params.items() if k != "self"}
