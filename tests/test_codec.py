"""Latent codecs: the pixel codec and the Wan VAE (a tiny random-config AutoencoderKLWan)."""

import pytest
import torch
from diffusers import AutoencoderKLWan

from unityvideo.models import CODEC_GEOMETRY, PixelCodec, WanVAECodec, load_codec


@pytest.mark.parametrize("factor, channels", [(2, 12), (4, 48)])
def test_pixel_codec_is_an_exact_space_to_depth(factor, channels):
    codec = PixelCodec(factor)
    video = torch.rand(2, 3, 5, 16, 24) * 2 - 1
    latent = codec.encode(video)
    assert latent.shape == (2, channels, 5, 16 // factor, 24 // factor)
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (channels, 1, factor)
    assert torch.equal(codec.decode(latent), video)
    # Channel-major blocks: channel c * f^2 + i * f + j holds pixel (i, j) of colour c in each block.
    assert torch.equal(latent[:, factor * factor + 1, :, 0, 0], video[:, 1, :, 0, 1])


def test_pixel_codec_rejects_bad_sizes():
    with pytest.raises(ValueError, match="not divisible by the codec's spatial factor 4"):
        PixelCodec(4).encode(torch.zeros(1, 3, 2, 10, 16))
    with pytest.raises(ValueError, match=r"\(B, 3, F, H, W\)"):
        PixelCodec(4).encode(torch.zeros(1, 4, 2, 16, 16))


def tiny_vae_folder(tmp_path):
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=16, z_dim=4, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           temperal_downsample=[False, True, True],
                           latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[2.0, 1.5, 0.5, 1.0])
    vae.save_pretrained(tmp_path / "vae")
    return vae, tmp_path


def test_wan_vae_codec_shapes_normalisation_and_round_trip(tmp_path):
    vae, root = tiny_vae_folder(tmp_path)
    codec = WanVAECodec.from_pretrained(root)  # a pipeline folder with vae/ works too
    assert (codec.latent_channels, codec.temporal_factor, codec.spatial_factor) == (4, 4, 8)
    video = torch.rand(1, 3, 9, 32, 32) * 2 - 1
    with torch.no_grad():
        latent = codec.encode(video)
        raw = vae.encode(video).latent_dist.mode()
        decoded = codec.decode(latent)
        direct = vae.decode(raw).sample.clamp(-1, 1)
    assert latent.shape == (1, 4, 3, 4, 4)
    mean = torch.tensor([0.1, -0.2, 0.3, 0.0]).view(1, 4, 1, 1, 1)
    std = torch.tensor([2.0, 1.5, 0.5, 1.0]).view(1, 4, 1, 1, 1)
    assert torch.allclose(latent, (raw - mean) / std, atol=1e-6)  # Wan's normalisation
    assert decoded.shape == video.shape
    assert torch.allclose(decoded, direct, atol=1e-5)


def test_wan_vae_codec_errors(tmp_path):
    _, root = tiny_vae_folder(tmp_path)
    codec = WanVAECodec.from_pretrained(root / "vae")
    with pytest.raises(ValueError, match=r"4k \+ 1 frames .* got 8; use 5 or 9"):
        codec.check_frames(8)
    with pytest.raises(ValueError, match="got 8"):
        codec.encode(torch.zeros(1, 3, 8, 32, 32))
    with pytest.raises(FileNotFoundError, match="config.json: missing"):
        WanVAECodec.from_pretrained(tmp_path / "nothing")
    with pytest.raises(ValueError, match="this VAE has 4 channels"):
        load_codec("wan2.1", root)


def test_codec_geometry_plans_latent_shapes():
    assert CODEC_GEOMETRY["wan2.1"].latent_shape(33, 256, 256) == (16, 9, 32, 32)
    assert CODEC_GEOMETRY["wan2.2"].latent_shape(33, 256, 256) == (48, 9, 16, 16)
    assert CODEC_GEOMETRY["pixel4"].latent_shape(16, 64, 64) == (48, 16, 16, 16)
    assert isinstance(load_codec("pixel2"), PixelCodec)
    with pytest.raises(ValueError, match="unknown codec"):
        load_codec("jpeg")
