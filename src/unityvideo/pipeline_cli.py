"""`unityvideo generate`: run a UnityVideo checkpoint on one request and write the videos.

Every check that can fail (checkpoint, task, modalities, inputs, frames/size) runs before the model is
loaded, so a bad request costs a fraction of a second and says what to change.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from unityvideo.assets import DEFAULT_CHECKPOINT
from unityvideo.cli_args import device, integer, number, output_file
from unityvideo.resources import check_memory

if TYPE_CHECKING:
    from unityvideo.pipeline import StreamPlan

VIDEO_SUFFIXES = (".mp4", ".mkv")
DTYPES = ("float32", "bfloat16", "float16")


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "generate",
        help="generate RGB and modality videos, or estimate a modality, with a UnityVideo checkpoint",
        description="Tasks: t2v (caption -> RGB), joint (caption -> RGB + modalities), control (modality "
        "videos + caption -> RGB), estimate (RGB video -> modalities). Writes OUT (RGB, H.264), "
        "OUT-stem.<modality>.mkv (lossless), OUT-stem.npz (decoded raw modalities) and "
        "OUT-stem.preview.mp4 (every stream side by side).",
    )
    p.add_argument("--checkpoint", type=Path, default=None,
                   help=f"checkpoint folder (unityvideo.json + transformer/); default: the shipped {DEFAULT_CHECKPOINT.name}")
    p.add_argument("--task", default="t2v", help="t2v | joint | control | estimate (default t2v)")
    p.add_argument("--modality", nargs="+", action="extend", default=[], metavar="M",
                   help="joint/estimate: modalities to generate; control: the modality of each --input, in order")
    p.add_argument("--prompt", default=None, help="caption (required for t2v and joint, optional otherwise)")
    p.add_argument("--negative-prompt", default="", help="caption of the unconditional pass (default empty)")
    p.add_argument("--input", nargs="+", action="extend", default=[], type=Path, metavar="VIDEO",
                   help="control: one modality video per --modality; estimate: the RGB video")
    p.add_argument("--out", type=output_file, required=True, help="output video path (.mp4 or .mkv)")
    p.add_argument("--steps", type=integer(1), default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=number(0), default=None,
                   help="text guidance scale (default 5 for t2v/joint/control, 1 = off for estimate)")
    p.add_argument("--modality-guidance", type=number(0), default=None,
                   help="guidance on the condition streams for control/estimate (default 1 = off)")
    p.add_argument("--seed", type=int, default=0, help="noise seed (default 0)")
    p.add_argument("--ensemble", type=integer(1), default=1, metavar="K",
                   help="estimate: combine K estimates (per-pixel median of depth and flow, vote of DensePose "
                        "parts, the most typical segmentation / skeleton); K times the work (default 1)")
    p.add_argument("--frames", type=integer(1), default=None,
                   help="frames (default: the checkpoint's, or fewer if an input is shorter); the first ones "
                        "of each input are used, and only those are decoded")
    p.add_argument("--size", type=integer(1), nargs=2, default=None, metavar=("H", "W"),
                   help="frame size (default: the checkpoint's); inputs are resized to cover it and "
                        "centre-cropped")
    p.add_argument("--cache-condition", action="store_true",
                   help="control / estimate: compute the condition stream once, not every step (needs a model "
                        "trained with condition_isolation)")
    p.add_argument("--scheduler", default="euler", help="euler (flow-matching Euler) | unipc (default euler)")
    p.add_argument("--shift", type=number(0, open_low=True), default=None,
                   help="timestep shift (default: the checkpoint's)")
    p.add_argument("--device", type=device(allow_auto=True), default="auto",
                   help="cpu, cuda, cuda:1, ... (default: cuda if available)")
    p.add_argument("--dtype", default="float32", help=f"transformer dtype: {' | '.join(DTYPES)} (default float32)")
    p.set_defaults(func=run)


@dataclass
class Request:
    """A checked request: everything the model needs, nothing loaded yet but the input videos."""

    checkpoint: Path
    plan: StreamPlan
    inputs: dict  # stream name -> float tensor (3, F, H, W) in [-1, 1], resized and cropped
    frames: int
    size: tuple[int, int]
    fps: float
    notes: list[str]  # how each input was fitted to the request's geometry, for the user


def prepare(args: argparse.Namespace) -> Request:
    """All checks of a request, cheap ones first; raises ValueError / FileNotFoundError with the fix."""
    from unityvideo.models.checkpoint import load_checkpoint_spec
    from unityvideo.pipeline import SCHEDULERS, check_geometry, codec_geometry, plan_streams, read_transformer_config

    folder = args.checkpoint or DEFAULT_CHECKPOINT
    if args.checkpoint is None and not DEFAULT_CHECKPOINT.is_dir():
        raise FileNotFoundError(f"no --checkpoint given and the default checkpoint {DEFAULT_CHECKPOINT} is not "
                                "installed; pass --checkpoint DIR (a folder exported by `unityvideo train`)")
    if args.out.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"--out {args.out}: use a .mp4 or .mkv path (modality videos and the .npz go beside it)")
    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    if args.scheduler not in SCHEDULERS:
        raise ValueError(f"--scheduler {args.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
    if args.ensemble < 1:
        raise ValueError(f"--ensemble must be >= 1, got {args.ensemble}")
    if args.ensemble > 1 and args.task != "estimate":
        raise ValueError(f"--ensemble combines estimates; --task {args.task} generates (drop --ensemble)")
    if args.dtype not in DTYPES:
        raise ValueError(f"--dtype {args.dtype!r}: choose one of {', '.join(DTYPES)}")
    spec = load_checkpoint_spec(folder)
    if args.task in ("t2v", "joint") and not args.prompt:
        raise ValueError(f"--task {args.task} generates from a caption: pass --prompt")
    if args.task in ("t2v", "joint") and args.input:
        raise ValueError(f"--task {args.task} takes no --input (use control or estimate to condition on videos)")
    if args.task == "control" and len(args.input) != len(args.modality):
        raise ValueError(f"control: {len(args.input)} --input videos for {len(args.modality)} --modality names; "
                         "give one input video per modality, in the same order")
    if args.task == "estimate" and len(args.input) != 1:
        raise ValueError(f"estimate needs exactly one --input, the RGB video (got {len(args.input)})")
    conditions = list(args.modality) if args.task == "control" else ["rgb"] * len(args.input)
    modalities = [] if args.task == "control" else list(args.modality)
    plan = plan_streams(args.task, modalities, conditions, spec.tasks, spec.modalities)

    shapes = {name: _probe_input(path) for name, path in zip(plan.condition_names, args.input)}
    frames, size = _request_geometry(args, spec, shapes)
    for path, (count, _, _) in zip(args.input, shapes.values()):
        if count < frames:
            raise ValueError(f"--input {path}: has {count} frames, {frames} requested; lower --frames")
    config = read_transformer_config(folder)
    patch = config.get("patch_size", (1, 2, 2))
    shape = check_geometry(codec_geometry(spec.codec), patch, config.get("rope_max_seq_len", 1024), frames, *size,
                           len(plan.streams))
    check_memory(generation_memory(config, shape, frames, size, len(plan.streams)),
                 f"generating {frames} frames of {size[0]}x{size[1]}", "lower --frames or --size")
    inputs = {name: _fit(_read_input(path, frames), name, frames, size, path)
              for name, path in zip(plan.condition_names, args.input)}
    notes = [f"--input {path}: {n} frames of {h}x{w} -> frames 0-{frames - 1}"
             + (f", resized and centre-cropped to {size[0]}x{size[1]}" if (h, w) != size else "")
             + ("" if args.size else " (the checkpoint's size; --size for another)")
             for path, (n, h, w) in zip(args.input, shapes.values())]
    return Request(folder, plan, inputs, frames, size, spec.fps, notes)


# Live float32 values per token while a block runs: its input and output, q, k, v, the attention output
# and the feed-forward hidden (ffn_dim), for each of up to three guidance passes.
def generation_memory(config: dict, latent_shape, frames: int, size: tuple[int, int], streams: int) -> float:
    """Bytes a generation needs, about: the transformer's working set over every token, plus the videos."""
    patch = config.get("patch_size", (1, 2, 2))
    tokens = streams * int(np.prod([n // p for n, p in zip(latent_shape[1:], patch)]))
    dim = config.get("num_attention_heads", 12) * config.get("attention_head_dim", 128)
    per_token = (6 * dim + config.get("ffn_dim", 4 * dim)) * 4 * 3
    videos = (streams + 1) * frames * size[0] * size[1] * 3 * 4
    return tokens * per_token + videos


def _probe_input(path: Path) -> tuple[int, int, int]:
    """(frames, height, width) of an input video, without decoding its pictures."""
    from unityvideo.data.video import VideoReadError, probe_video

    try:
        frames, height, width, _ = probe_video(path)
    except VideoReadError as err:  # a user error: exit code 2 and one line
        raise ValueError(f"--input: {err}; pass a readable .mp4/.mkv video") from err
    return frames, height, width


def _read_input(path: Path, frames: int) -> np.ndarray:
    """The first `frames` frames of an input (decoding stops there)."""
    from unityvideo.data.video import VideoReadError, read_video

    try:
        return read_video(path, list(range(frames)))
    except VideoReadError as err:
        raise ValueError(f"--input: {err}; pass a readable .mp4/.mkv video") from err


def _request_geometry(args, spec, shapes: dict[str, tuple[int, int, int]]) -> tuple[int, tuple[int, int]]:
    """Frames and size: the flags, else the checkpoint's (fewer frames when an input is shorter). A
    model runs best at the geometry it was trained at, and a real video's own size can be far beyond it."""
    frames = args.frames or min([spec.frames, *(n for n, _, _ in shapes.values())])
    size = tuple(args.size) if args.size else tuple(spec.size)
    if min(size) < 1 and shapes:  # trained at the clips' own sizes (data.size null): the first input's
        size = next(iter(shapes.values()))[1:]
    if frames < 1 or min(size) < 1:
        raise ValueError(f"--frames {frames} and --size {size[0]} {size[1]} must be positive")
    return frames, size


def _fit(video: np.ndarray, name: str, frames: int, size: tuple[int, int], path: Path):
    """The first `frames` frames, resized to cover `size` and centre-cropped (nearest for categorical
    modalities, so their palettes survive)."""
    from unityvideo.data.transforms import apply_crop, plan_crop
    from unityvideo.modalities import get_modality

    if video.shape[0] < frames:
        raise ValueError(f"--input {path}: has {video.shape[0]} frames, {frames} requested; lower --frames")
    return apply_crop(video[:frames], plan_crop(video.shape[1:3], size), get_modality(name).categorical)


def run(args: argparse.Namespace) -> int:
    request = prepare(args)  # every user error surfaces here, before the model loads
    for note in request.notes:
        print(note)

    import torch

    from unityvideo.pipeline import UnityVideoPipeline

    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    pipe = UnityVideoPipeline.from_pretrained(request.checkpoint, torch_dtype=getattr(torch, args.dtype),
                                              device=device, scheduler=args.scheduler)
    for path in execute(pipe, request, args):
        print(f"wrote {path}")
    return 0


def execute(pipe, request: Request, args: argparse.Namespace, callback_on_step_end=None) -> list[Path]:
    """Run a checked request on a loaded pipeline and write its files (see `write_outputs`)."""
    import torch

    generator = torch.Generator("cpu").manual_seed(args.seed)
    output = pipe(prompt=args.prompt or "", task=args.task, modalities=args.modality if args.task != "control" else (),
                  conditions=request.inputs, negative_prompt=args.negative_prompt, num_frames=request.frames,
                  height=request.size[0], width=request.size[1], num_inference_steps=args.steps,
                  guidance_scale=args.guidance, modality_guidance_scale=args.modality_guidance, shift=args.shift,
                  generator=generator, cache_condition=args.cache_condition, ensemble_size=args.ensemble,
                  callback_on_step_end=callback_on_step_end)
    return write_outputs(args.out, output, request, args)


def write_outputs(out: Path, output, request: Request, args: argparse.Namespace) -> list[Path]:
    """RGB -> OUT (H.264); modality m -> OUT-stem.m.mkv (lossless); raw modalities -> OUT-stem.npz;
    all streams side by side -> OUT-stem.preview.mp4. Sample 0 of the batch (the CLI runs one)."""
    from unityvideo.data.raw import save_raw
    from unityvideo.data.transforms import tensor_to_frames
    from unityvideo.data.video import write_video
    from unityvideo.modalities import get_modality

    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for name, frames in output.frames.items():
        path = out if name == "rgb" else out.with_name(f"{out.stem}.{name}.mkv")
        written.append(write_video(path, frames[0], fps=request.fps, lossless=name != "rgb"))
    if output.raw:
        raw = {name: values[0] for name, values in output.raw.items()}
        meta = {"task": args.task, "prompt": args.prompt or "", "seed": args.seed, "steps": args.steps,
                "ensemble": args.ensemble,
                "checkpoint": str(request.checkpoint), "hints": output.hints}
        written.append(save_raw(out.with_name(f"{out.stem}.npz"), raw, meta=json.loads(json.dumps(meta))))
    # Preview: inputs as given, then each generated stream as people look at it (flow wheel, depth colours).
    panels = [tensor_to_frames(video) for video in request.inputs.values()]
    for name, frames in output.frames.items():
        raw = output.raw.get(name)
        panels.append(frames[0] if raw is None else get_modality(name).visualize(raw[0], **output.hints[name]))
    written.append(write_video(out.with_name(f"{out.stem}.preview.mp4"), np.concatenate(panels, axis=2),
                               fps=request.fps, lossless=False))
    return written
