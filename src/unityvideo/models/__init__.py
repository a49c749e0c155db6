"""Models room: the N-stream UnityVideo transformer, text encoders and latent codecs."""

from .codec import (CODEC_GEOMETRY, LATENT_NORMS, LatentCodec, LatentGeometry, LatentNorm, PixelCodec, WanVAECodec,
                    load_codec)
from .text import TextEncoder, load_text_encoder
from .transformer import (
    DEFAULT_MODALITIES,
    ConditionCache,
    PRESET_CODECS,
    PRESETS,
    RGB,
    Stream,
    UnityVideoTransformer,
)
from .flops import forward_flops

__all__ = [
    "CODEC_GEOMETRY", "ConditionCache", "DEFAULT_MODALITIES", "LATENT_NORMS", "LatentCodec", "LatentGeometry",
    "LatentNorm", "PixelCodec", "PRESET_CODECS",
    "PRESETS", "RGB", "Stream", "TextEncoder", "UnityVideoTransformer", "WanVAECodec", "forward_flops",
    "load_codec", "load_text_encoder",
]
