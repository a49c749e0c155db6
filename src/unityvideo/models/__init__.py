"""Models room: the N-stream UnityVideo transformer, text encoders and latent codecs."""

from .codec import CODEC_GEOMETRY, LatentCodec, LatentGeometry, PixelCodec, WanVAECodec, load_codec
from .text import TextEncoder, load_text_encoder
from .transformer import (
    DEFAULT_MODALITIES,
    ConditionCache,
    PRESET_CODECS,
    PRESETS,
    RGB,
    Stream,
    UnityVideoTransformer,
    forward_flops,
)

__all__ = [
    "CODEC_GEOMETRY", "ConditionCache", "DEFAULT_MODALITIES", "LatentCodec", "LatentGeometry", "PixelCodec", "PRESET_CODECS",
    "PRESETS", "RGB", "Stream", "TextEncoder", "UnityVideoTransformer", "WanVAECodec", "forward_flops",
    "load_codec", "load_text_encoder",
]
