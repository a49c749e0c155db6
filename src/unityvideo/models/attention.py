"""Condition isolation and the condition cache of `UnityVideoTransformer`.

Under `condition_isolation`, clean condition streams (t = 0) attend only to clean streams while noisy
streams attend to everything; the attention routes below implement that (two attention calls, or one
masked call), record the clean streams' keys and values once (`ConditionCache`), and reuse them in every
denoising step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

if TYPE_CHECKING:
    from .transformer import Stream

def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's interleaved rotary embedding, the same arithmetic as `WanAttnProcessor` (where it is a
    closure, so it cannot be imported)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


def rotated_qkv(attn, hidden_states: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]):
    """Wan's self-attention inputs: projections (fused or not), qk-norm, heads, RoPE: (B, L, H, d) each."""
    query, key, value = _get_qkv_projections(attn, hidden_states, None)
    query, key = attn.norm_q(query), attn.norm_k(key)
    query, key, value = (t.unflatten(2, (attn.heads, -1)) for t in (query, key, value))
    return _apply_rope(query, *rope), _apply_rope(key, *rope), value


class StreamAttnProcessor(WanAttnProcessor):
    """Wan's attention processor with an optional `route` for self-attention.

    route=None is Wan's processor unchanged. A route gets the rotated (query, key, value) and an
    `attend(q, k, v, mask=None)` function (diffusers' attention dispatch, so the backend chosen with
    `set_attention_backend` or `sdpa_kernel` applies) and returns the attention output (B, L, H, d).
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 rotary_emb=None, route: "AttentionRoute | None" = None):
        if route is None:
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        query, key, value = rotated_qkv(attn, hidden_states, rotary_emb)
        out = route(query, key, value, self.attend)
        return attn.to_out[1](attn.to_out[0](out.flatten(2, 3).type_as(query)))

    def attend(self, query, key, value, mask=None):
        return dispatch_attention_fn(query, key, value, attn_mask=mask, backend=self._attention_backend)


class AttentionRoute:
    """Self-attention of one call: (query, key, value, attend) -> output, all (B, L, H, d)."""

    def __call__(self, query, key, value, attend):
        raise NotImplementedError


class SplitAttention(AttentionRoute):
    """The same streams are clean in every sample: clean queries over clean keys, the other queries
    over all keys. Two attention calls and no dense mask, so flash / cuDNN kernels still apply."""

    def __init__(self, clean: Sequence[bool], tokens_per_stream: int, device: torch.device):
        streams = torch.tensor(clean, device=device)
        token_clean = streams.repeat_interleave(tokens_per_stream)
        self.clean_tokens = token_clean.nonzero().squeeze(1)
        self.noisy_tokens = (~token_clean).nonzero().squeeze(1)
        self.inverse = torch.cat([self.clean_tokens, self.noisy_tokens]).argsort()  # back to sequence order

    def __call__(self, query, key, value, attend):
        out_clean = attend(*(t.index_select(1, self.clean_tokens) for t in (query, key, value)))
        out_noisy = attend(query.index_select(1, self.noisy_tokens), key, value)
        return torch.cat([out_clean, out_noisy], dim=1).index_select(1, self.inverse)


class MaskedAttention(AttentionRoute):
    """Samples of one call differ in which streams are clean (mixed tasks in a training group): a
    per-sample boolean mask. Correct for any pattern, but dense (B, 1, L, L) and kernels that take no
    mask fall back to slower ones."""

    def __init__(self, clean: torch.Tensor, tokens_per_stream: int):
        self.mask = isolation_mask(clean, tokens_per_stream)

    def __call__(self, query, key, value, attend):
        return attend(query, key, value, self.mask)


def isolation_mask(clean: torch.Tensor, tokens_per_stream: int) -> torch.Tensor:
    """(B, 1, L, L) bool, True = may attend: a clean query sees only clean keys. clean: (B, S) bool."""
    tokens = clean.repeat_interleave(tokens_per_stream, dim=1)
    return ~(tokens[:, :, None] & ~tokens[:, None, :])[:, None]


@dataclass
class RecordingAttention(AttentionRoute):
    """Plain attention that keeps every layer's keys and values, in call order (builds a cache)."""

    keys: list = field(default_factory=list)
    values: list = field(default_factory=list)

    def __call__(self, query, key, value, attend):
        self.keys.append(key)
        self.values.append(value)
        return attend(query, key, value)


@dataclass
class CachedAttention(AttentionRoute):
    """Queries of the computed streams over their own keys and one layer of a condition cache, the keys
    merged in layout order (the order the uncached forward uses, so results agree to rounding)."""

    key: torch.Tensor  # (B_cache, S_cached * N, H, d)
    value: torch.Tensor
    cached: tuple[bool, ...]  # per stream of the layout: True = from the cache

    def __call__(self, query, key, value, attend):
        return attend(query, self._merge(key, self.key), self._merge(value, self.value))

    def _merge(self, computed: torch.Tensor, cached: torch.Tensor) -> torch.Tensor:
        if computed.shape[0] != cached.shape[0]:  # CFG passes stacked on a cache of one pass
            cached = cached.repeat(computed.shape[0] // cached.shape[0], 1, 1, 1)
        parts = {True: list(cached.chunk(sum(self.cached), dim=1)),
                 False: list(computed.chunk(len(self.cached) - sum(self.cached), dim=1))}
        return torch.cat([parts[c].pop(0) for c in self.cached], dim=1)


@dataclass
class ConditionCache:
    """Self-attention keys and values of clean condition streams, one pair per layer.

    Built once by `UnityVideoTransformer.cache_conditions` and passed to every denoising step as
    `forward(open_streams, condition_cache=cache)`. Valid only under `condition_isolation`: a clean
    stream never attends to noisy ones, so its tokens (hence its keys and values) do not depend on the
    noisy streams or their timestep. A forward whose batch is k times the cache's uses cache row
    i % batch for sample i (CFG passes stacked along the batch share one cache).
    """

    layout: tuple[str, ...]  # every stream's modality, in model order
    cached: tuple[bool, ...]  # True where the stream comes from the cache
    grid: tuple[int, int, int]  # latent patches (F, H, W) per stream
    keys: list[torch.Tensor]  # per layer, (B, S_cached * N, H, d), RoPE applied
    values: list[torch.Tensor]

    @property
    def batch(self) -> int:
        return self.keys[0].shape[0]

    @property
    def open_modalities(self) -> tuple[str, ...]:
        """The streams a forward with this cache must give, in order."""
        return tuple(m for m, c in zip(self.layout, self.cached) if not c)

    @staticmethod
    def cat(caches: Sequence["ConditionCache"]) -> "ConditionCache":
        """Caches of the same layout stacked along the batch (CFG passes whose conditions differ)."""
        first = caches[0]
        if any(c.layout != first.layout or c.cached != first.cached or c.grid != first.grid for c in caches):
            raise ValueError("only caches of one stream layout and grid can be stacked")
        return ConditionCache(first.layout, first.cached, first.grid,
                              [torch.cat(k) for k in zip(*(c.keys for c in caches))],
                              [torch.cat(v) for v in zip(*(c.values for c in caches))])

    def check(self, streams: Sequence[Stream], grid: tuple[int, int, int]) -> None:
        given = tuple(s.modality for s in streams)
        if given != self.open_modalities:
            raise ValueError(f"condition_cache: the streams must be the layout's uncached ones "
                             f"{list(self.open_modalities)} in order (layout {list(self.layout)}), got {list(given)}")
        if tuple(grid) != tuple(self.grid):
            raise ValueError(f"condition_cache: built for a latent grid of {self.grid} patches, the streams "
                             f"have {grid}; build the cache from latents of the same size")
        batch = streams[0].latent.shape[0]
        if batch % self.batch:
            raise ValueError(f"condition_cache: built for batch {self.batch}, the streams have batch {batch} "
                             "(must be a multiple: one cache row per sample, repeated for stacked CFG passes)")
