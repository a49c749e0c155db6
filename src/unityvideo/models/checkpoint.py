"""A UnityVideo checkpoint folder: the transformer plus everything needed to run it.

    DIR/transformer/      UnityVideoTransformer.save_pretrained (config.json + safetensors)
    DIR/unityvideo.json   CheckpointSpec: text encoder, codec, learned modalities and tasks, clip geometry,
                          how estimation was trained (`estimate_mode`)
    DIR/config.yaml       the exact training config of the run that produced it (optional)
    DIR/adapter/          a LoRA run's adapter (then transformer/ holds only config.json and
                          unityvideo.json names the `base` model it applies to; models/lora.py)

The trainer writes it (EMA weights), the pipeline and `unityvideo generate` read it. Fields added
later have defaults, so older unityvideo.json files load unchanged (`estimate_mode`: "generative",
`estimate_caption`: false). Paths to the text encoder and VAE folders are relative to DIR when the
trainer could write them so (a moved or copied folder keeps working; see `resolve_asset`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..modalities import ENCODING_VERSIONS

SPEC_NAME = "unityvideo.json"
TRANSFORMER_DIR = "transformer"
FORMAT = 1
# How a checkpoint estimates modalities: "generative" (the paper's L_est, sampled from noise in N steps)
# or "one_step" (x_0 in one deterministic step from t = 1 and a zero input; see unityvideo.flow).
ESTIMATE_MODES = ("generative", "one_step")
# How the transformer sees a prompt's features. "masked": a key mask hides the padding (only real tokens
# are attended, so the padding length does not matter and may be trimmed). "zero_padded": Wan's and
# diffusers' WanPipeline convention, features zero past the prompt's tokens, padded to 512 and every
# position attended with no mask; the padding's projected features are not zero (the text embedder has
# biases), so a Wan backbone is Wan only under this convention.
TEXT_CONVENTIONS = ("masked", "zero_padded")
# How an export holds its text encoder and VAE folders: a path relative to the checkpoint folder (absolute
# where none exists), a copy inside it, or a symbolic link inside it.
ASSET_MODES = ("reference", "copy", "link")
BUILTIN_TEXT_ENCODERS = ("minilm",)


@dataclass
class CheckpointSpec:
    text_encoder: str = "minilm"                     # "minilm" or a local umT5 folder
    codec: str = "pixel4"                            # pixel2 | pixel4 | wan2.1 | wan2.2
    codec_folder: str | None = None                  # local VAE folder for the Wan codecs
    modalities: list[str] = field(default_factory=list)  # modalities the model has learned
    tasks: list[str] = field(default_factory=list)       # control | estimate | joint | t2v
    frames: int = 16
    size: tuple[int, int] = (64, 64)
    fps: float = 8.0
    shift: float = 1.0                               # sampling timestep shift
    modality_prompt_template: str = "{prompt}"
    modality_prompts: dict[str, str] = field(default_factory=dict)  # per-modality prompt (else the template's)
    latent_norm: dict[str, list[float]] = field(default_factory=dict)  # stream -> [mean, std] (LatentNorm)
    step: int = 0
    estimate_mode: str = "generative"                # generative | one_step (ESTIMATE_MODES)
    estimate_caption: bool = False                   # estimate was trained with the RGB caption (else with none)
    text_convention: str = "masked"                  # masked | zero_padded (Wan's): models.text.TEXT_CONVENTIONS
    # modality -> the picture format version it was trained on (Modality.version); a file written before
    # formats were recorded reads as version 1 of every modality
    encodings: dict[str, int] = field(default_factory=lambda: dict(ENCODING_VERSIONS))
    # A LoRA export: DIR/transformer/ holds only config.json, the weights are the `base` model (a Wan
    # backbone folder or a UnityVideo checkpoint) plus the peft adapter in DIR/<adapter> (models/lora.py).
    base: str | None = None
    adapter: str | None = None
    format: int = FORMAT

    def save(self, folder: str | Path) -> Path:
        path = Path(folder) / SPEC_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2) + "\n")
        return path


def load_checkpoint_spec(folder: str | Path) -> CheckpointSpec:
    """Read DIR/unityvideo.json, with errors that say which file is wrong and how to fix it."""
    folder = Path(folder)
    path = folder / SPEC_NAME
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder {folder} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: {folder} is not a UnityVideo checkpoint (export one "
                                "with `unityvideo train ... ` or point --checkpoint at its folder)")
    if not (folder / TRANSFORMER_DIR / "config.json").is_file():
        raise FileNotFoundError(f"{folder / TRANSFORMER_DIR / 'config.json'} is missing: the checkpoint has "
                                "no transformer (expected DIR/transformer/ written by save_pretrained)")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); re-export the checkpoint") from err
    known = {f.name for f in dataclasses.fields(CheckpointSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown fields {unknown}; known fields are {sorted(known)}")
    if raw.get("format", FORMAT) > FORMAT:
        raise ValueError(f"{path}: format {raw['format']} is newer than this version of unityvideo "
                         f"understands ({FORMAT}); upgrade unityvideo")
    spec = CheckpointSpec(**{"encodings": {}, **raw})
    spec.size = tuple(spec.size)
    if spec.text_convention not in TEXT_CONVENTIONS:
        raise ValueError(f"{path}: text_convention={spec.text_convention!r}; choose one of {TEXT_CONVENTIONS}")
    if spec.estimate_mode not in ESTIMATE_MODES:
        raise ValueError(f"{path}: estimate_mode={spec.estimate_mode!r}; choose one of {ESTIMATE_MODES} "
                         "(or remove the field: the default is generative)")
    return spec


def place_asset(path: str | None, staging: Path, final: Path, name: str, mode: str) -> str | None:
    """Put a local asset folder (text encoder, VAE) of an export being written into `staging` (renamed to
    `final` when complete) and return how unityvideo.json names it. Built-in names pass through."""
    if path is None or path in BUILTIN_TEXT_ENCODERS:
        return path
    source = Path(path).resolve()
    if not source.exists():
        raise FileNotFoundError(f"{path}: the {name} folder to export does not exist")
    if mode == "copy":
        shutil.copytree(source, staging / name, symlinks=False)
        return name
    if mode == "link":
        (staging / name).symlink_to(source, target_is_directory=source.is_dir())
        return name
    try:
        return os.path.relpath(source, final.resolve())
    except ValueError:  # another drive (Windows): no relative path exists
        return str(source)


def resolve_asset(folder: str | Path, path: str | None, what: str) -> str | None:
    """The local folder unityvideo.json names for `what`: relative to the checkpoint folder (older exports
    named it relative to the working directory, which is tried second), or a clear error."""
    if path is None or path in BUILTIN_TEXT_ENCODERS:
        return path
    folder = Path(folder)
    candidates = [Path(path)] if Path(path).is_absolute() else [folder / path, Path(path)]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    raise FileNotFoundError(
        f"{folder / SPEC_NAME}: the {what} {path!r} is not there (looked for {', '.join(map(str, candidates))}); "
        f"the checkpoint was moved without it. Put the {what} folder back at that place relative to the "
        f"checkpoint, re-export with train.export_assets=copy, or pass a loaded {what} to from_pretrained")
