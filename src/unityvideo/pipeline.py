"""UnityVideoPipeline: text-to-video, joint generation, controllable generation and modality estimation
with one UnityVideo transformer, in the style of a diffusers pipeline.

Every task is a list of streams, RGB first (its RoPE width offset is 0, as in training):

    task       streams (target = denoised from t = 1 to 0, condition = clean, t = 0)
    t2v        rgb (target)
    joint      rgb (target), m_1 ... m_k (targets)          one shared noise schedule
    control    rgb (target), m_1 ... m_k (conditions)       condition latent = codec.encode(video)
    estimate   rgb (condition), m_1 ... m_k (targets)

The RGB stream cross-attends to the caption, a modality stream to its modality prompt
(`spec.modality_prompt_template.format(prompt=get_modality(m).prompt)`), as in training.

Classifier-free guidance, compositional (one term per condition, each 1.0 = off and its pass skipped):

    v = v(c) + (g_text - 1) * (v(c) - v(c with the caption replaced by the negative prompt, "" by default))
             + (g_mod  - 1) * (v(c) - v(c with every condition stream replaced by noise at t = 1))

With only g_text this is the usual CFG, v_u + g (v_c - v_u). "A condition replaced by noise at t = 1"
keeps the stream layout (so every pass is one batched forward) and is a state the model learned:
the joint task samples each stream's t independently, so t = 1 is "this modality unknown". Modality
streams keep their modality prompt in every pass (it names the stream, it is not a condition).
g_mod applies to control (condition = modality videos) and estimate (condition = the RGB video).

Condition cache (`cache_condition=True`, control and estimate): with a transformer trained with
`condition_isolation=True` the clean condition streams never attend to the noisy ones, so their
per-layer keys and values are computed once per generation (per distinct condition context) and
every step runs only the target streams over them. Same result as without the cache, to rounding.

The model is called with t = the scheduler's sigma (flow matching: x_t = (1 - t) x_0 + t eps), not
its rounded integer timestep, so Euler and UniPC see the exact t of the sample they step.

One-step estimation (`pipe.estimate_mode == "one_step"`, from the checkpoint's `estimate_mode`, i.e. a
model trained with `routing.estimate_mode: one_step`): `estimate` starts its targets from zeros at
t = 1 exactly and takes one Euler step to t = 0, x_0 = x_1 - v = -v, as it was trained (unityvideo.flow).
That is one forward, deterministic (the generator does not matter, unless modality guidance asks for
noise); num_inference_steps and ensemble_size are ignored (with one info line), and the scheduler is
not used (UniPC's first sigma is not exactly 1). The other tasks sample as usual.
"""

from __future__ import annotations

import contextlib
import json
import logging
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from .flow import TASK_TABLE
from .models import lora
from .models.checkpoint import ESTIMATE_MODES, TRANSFORMER_DIR, CheckpointSpec, load_checkpoint_spec, resolve_asset
from .models.codec import LatentCodec, LatentGeometry, LatentNorm, codec_geometry, load_codec
from .models.text import TextEncoder, load_text_encoder
from .models.transformer import RGB, ConditionCache, Stream, UnityVideoTransformer
from .modalities import canonical_name, check_encodings, get_modality, picture_hints

__all__ = [
    "TASKS", "SCHEDULERS", "DEFAULT_GUIDANCE", "UnityVideoPipeline", "UnityVideoPipelineOutput",
    "StreamPlan", "plan_streams", "check_geometry", "codec_geometry", "make_scheduler", "read_transformer_config",
]

TASKS = ("t2v", "joint", "control", "estimate")  # flow.TASK_TABLE's tasks, in the order people read them
SCHEDULERS = ("euler", "unipc")
# Text guidance by default for the generative tasks; estimation is a measurement: no guidance.
DEFAULT_GUIDANCE = {"t2v": 5.0, "joint": 5.0, "control": 5.0, "estimate": 1.0}
Generator = torch.Generator | list[torch.Generator] | None

log = logging.getLogger("unityvideo.pipeline")


@dataclass
class UnityVideoPipelineOutput(BaseOutput):
    """frames: generated stream -> its video encoding, uint8 (B, F, H, W, 3) (output_type "pt": float
    (B, F, 3, H, W) in [0, 1]; "pil": per sample a list of PIL images);
    raw: generated modality -> one decoded raw array per sample (WorldClip layout, e.g. depth (F, H, W));
    latents: every stream's final latent (B, C, F', H', W'), conditions included (unchanged);
    hints: the decode hints used per modality (depth near, flow max_flow, ...)."""

    frames: dict[str, np.ndarray]
    raw: dict[str, list[np.ndarray]]
    latents: dict[str, torch.Tensor]
    hints: dict[str, dict[str, Any]] = field(default_factory=dict)


# ----- planning a request (shared with the CLI, which checks before loading anything) -----------


@dataclass(frozen=True)
class StreamPlan:
    """The streams of one request in model order (RGB first) and which of them are targets."""

    task: str
    streams: tuple[str, ...]
    targets: tuple[bool, ...]

    @property
    def target_names(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.streams, self.targets) if t)

    @property
    def condition_names(self) -> tuple[str, ...]:
        return tuple(n for n, t in zip(self.streams, self.targets) if not t)


def plan_streams(task: str, modalities: Sequence[str] = (), conditions: Sequence[str] = (),
                 learned_tasks: Sequence[str] | None = None,
                 learned_modalities: Sequence[str] | None = None) -> StreamPlan:
    """Check a request and lay out its streams.

    modalities: the generated modalities (joint, estimate) or the condition modalities (control; may
    be left empty, the condition names are used). conditions: names of the condition videos given
    (control: modalities; estimate: "rgb"). learned_*: what the checkpoint was trained for (None: any).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if learned_tasks is not None and task not in learned_tasks:
        raise ValueError(f"task {task!r}: this checkpoint was trained for {sorted(learned_tasks)} only; "
                         "pick one of those or a checkpoint trained with this task")
    modalities = [canonical_name(m) for m in modalities]
    conditions = [canonical_name(c) for c in conditions]
    if RGB in modalities:
        raise ValueError("'rgb' is not a modality here: list the visual modalities (depth, flow, ...)")
    for names, what in ((modalities, "modalities"), (conditions, "conditions")):
        if len(set(names)) != len(names):
            raise ValueError(f"{what} {names} name a stream twice")

    if task == "t2v":
        if modalities or conditions:
            raise ValueError(f"t2v generates RGB only; got modalities {modalities} and conditions {conditions} "
                             "(use --task joint to generate modalities too, --task control to condition on them)")
        streams = (RGB,)
    elif task == "joint":
        if not modalities or conditions:
            raise ValueError("joint generates RGB and at least one modality from a caption: give the "
                             f"modalities (got {modalities}) and no condition videos (got {conditions})")
        streams = (RGB, *modalities)
    elif task == "control":
        if RGB in conditions or not conditions:
            raise ValueError("control generates RGB from one or more modality videos: give a video per "
                             f"condition modality (got {conditions or 'none'})")
        if modalities and modalities != conditions:
            raise ValueError(f"control: {len(modalities)} modalities {modalities} but {len(conditions)} condition "
                             f"videos for {conditions}; give one input video per modality, in the same order")
        streams = (RGB, *conditions)
    else:  # estimate
        if conditions != [RGB]:
            raise ValueError("estimate needs exactly one input: the RGB video to estimate modalities from "
                             f"(got {conditions or 'none'})")
        if not modalities:
            raise ValueError("estimate: name the modality (or modalities) to estimate, e.g. depth")
        streams = (RGB, *modalities)
    spec = TASK_TABLE[task]  # which streams are generated comes from the task table, as in training
    plan = StreamPlan(task, streams, (spec.noisy_rgb,) + (spec.noisy_modality,) * (len(streams) - 1))

    unknown = [m for m in plan.streams if m != RGB and learned_modalities is not None
               and m not in learned_modalities]
    if unknown:
        raise ValueError(f"modalities {unknown}: this checkpoint has not learned them; it knows "
                         f"{sorted(learned_modalities or [])}")
    return plan


def check_geometry(geometry: LatentGeometry, patch_size: Sequence[int], rope_max_seq_len: int,
                   frames: int, height: int, width: int, num_streams: int) -> tuple[int, int, int, int]:
    """The latent shape (C, F', H', W') of a (frames, height, width) video, or a clear error when the
    codec or the transformer's patching / RoPE table cannot take it."""
    shape = geometry.latent_shape(frames, height, width)  # the codec's own frame/size errors
    step = [p * (geometry.spatial if i else geometry.temporal) for i, p in enumerate(patch_size)]
    for n, p, what, unit in zip(shape[1:], patch_size, ("frames", "height", "width"), step):
        if n % p:
            raise ValueError(f"{what}: the latent has {n} {what} (after the codec), not divisible by the "
                             f"transformer's patch size {p}; use a multiple of {unit} pixels/frames")
    if num_streams * shape[3] // patch_size[2] > rope_max_seq_len:
        raise ValueError(f"width {width}: {num_streams} streams side by side exceed the transformer's RoPE "
                         f"table ({rope_max_seq_len} patches); use a smaller width or fewer modalities")
    return shape


def make_scheduler(name: str = "euler", shift: float = 1.0):
    """diffusers' flow-matching Euler, or UniPC as Wan's pipelines configure it for flow models."""
    if name == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    if name == "unipc":
        return UniPCMultistepScheduler(num_train_timesteps=1000, prediction_type="flow_prediction",
                                       use_flow_sigmas=True, flow_shift=shift)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def _fresh_scheduler(scheduler, shift: float | None):
    """A new scheduler from `scheduler`'s config (schedulers keep per-run state), with `shift` if given."""
    config = dict(scheduler.config)
    if shift is not None:
        key = "flow_shift" if "flow_shift" in config else "shift"
        if key not in config:
            raise ValueError(f"{type(scheduler).__name__} has no shift setting; pass shift=None")
        config[key] = float(shift)
    return type(scheduler).from_config(config)


# ----- the pipeline ----------------------------------------------------------------------------------


class UnityVideoPipeline:
    """transformer + text encoder + latent codec + a flow-matching scheduler (swap `pipe.scheduler`).

    spec: the checkpoint's CheckpointSpec (learned tasks / modalities, default frames, size, shift);
    None accepts any task and the transformer's modalities and needs num_frames / height / width.
    estimate_mode: how `estimate` runs, "generative" (sampled from noise) or "one_step" (one
    deterministic step, see the module doc); default: the spec's (generative without a spec).
    Readable and settable as `pipe.estimate_mode`.
    """

    def __init__(self, transformer: UnityVideoTransformer, text_encoder: TextEncoder, codec: LatentCodec,
                 scheduler=None, spec: CheckpointSpec | None = None, estimate_mode: str | None = None):
        if text_encoder.dim != transformer.config.text_dim:
            raise ValueError(f"text encoder {text_encoder.name} gives {text_encoder.dim}-d features but the "
                             f"transformer's text_dim is {transformer.config.text_dim}; use the checkpoint's encoder")
        if codec.latent_channels != transformer.config.in_channels:
            raise ValueError(f"codec latents have {codec.latent_channels} channels but the transformer takes "
                             f"{transformer.config.in_channels}; use the checkpoint's codec")
        self.transformer = transformer.eval()
        self.text_encoder = text_encoder
        self.codec = codec
        self.spec = spec
        self.latent_norm = LatentNorm.from_json(spec.latent_norm if spec else None)
        self.scheduler = scheduler or make_scheduler("euler", spec.shift if spec else 1.0)
        self.estimate_mode = estimate_mode or (spec.estimate_mode if spec else "generative")
        # estimate as trained: the paper's L_est sees no caption, so a prompt would be out of distribution
        self.estimate_caption = spec.estimate_caption if spec else True
        # text as trained (models.text.TEXT_CONVENTIONS); without a spec, the encoder's own
        self.text_convention = spec.text_convention if spec else text_encoder.convention
        self._prompt_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._progress_config: dict[str, Any] = {}
        self._noted: set = set()
        self._offload_device: torch.device | None = None

    def _note_once(self, key, message: str) -> None:
        if key not in self._noted:
            self._noted.add(key)
            log.info(message)

    @property
    def estimate_mode(self) -> str:
        return self._estimate_mode

    @estimate_mode.setter
    def estimate_mode(self, mode: str) -> None:
        if mode not in ESTIMATE_MODES:
            raise ValueError(f"estimate_mode={mode!r}; choose one of {ESTIMATE_MODES}")
        self._estimate_mode = mode

    @classmethod
    def from_pretrained(cls, folder: str | Path, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, scheduler: str = "euler",
                        text_encoder: TextEncoder | None = None,
                        codec: LatentCodec | None = None, estimate_mode: str | None = None) -> "UnityVideoPipeline":
        """Load a checkpoint folder (DIR/unityvideo.json + DIR/transformer/, see models/checkpoint.py; a
        LoRA export loads its base with the adapter, unfused: `fuse_lora` fuses it).
        text_encoder / codec: already loaded ones to share between pipelines (else loaded from the spec).
        estimate_mode: override the checkpoint's (None: the spec's `estimate_mode`)."""
        folder = Path(folder)
        spec = load_checkpoint_spec(folder)
        transformer = lora.load_transformer(folder, torch_dtype=torch_dtype)
        missing = [m for m in spec.modalities if m not in transformer.stream_names]
        if missing:
            raise ValueError(f"{folder / 'unityvideo.json'}: modalities {missing} are not in the transformer's "
                             f"config ({list(transformer.stream_names)}); re-export the checkpoint")
        text_encoder = text_encoder or load_text_encoder(resolve_asset(folder, spec.text_encoder, "text encoder"))
        codec = codec or load_codec(spec.codec, resolve_asset(folder, spec.codec_folder, "VAE"))
        pipe = cls(transformer, text_encoder, codec, make_scheduler(scheduler, spec.shift), spec, estimate_mode)
        return pipe.to(device) if device is not None else pipe

    def to(self, device: str | torch.device) -> "UnityVideoPipeline":
        self.transformer.to(device)
        self.codec.to(device)
        self.text_encoder.to(device)
        self._prompt_cache.clear()
        return self

    @property
    def device(self) -> torch.device:
        """Where the computation runs (with model CPU offload: the offload device, not the weights')."""
        return self._offload_device or self.transformer.device

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> "UnityVideoPipeline":
        """Keep text encoder, transformer and codec in CPU memory and move each to `device` only while
        it runs (text encoding, denoising, VAE encode / decode): the GPU holds one model at a time, at
        the cost of a transfer per call. As diffusers' pipelines do."""
        self.to("cpu")
        self._offload_device = torch.device(device)
        return self

    def load_lora_weights(self, folder: str | Path) -> "UnityVideoPipeline":
        """Add a LoRA adapter folder (adapter_config.json + adapter_model.safetensors, as a LoRA run
        exports it) to a transformer without one: it replaces the UnityVideo parts too."""
        lora.load_adapter(self.transformer, folder)
        return self

    def fuse_lora(self, scale: float = 1.0) -> "UnityVideoPipeline":
        """Fold the adapter into the backbone's weights (no extra matmuls per layer); `unfuse_lora` undoes it."""
        self._require_lora()
        lora.fuse_lora(self.transformer, scale)
        return self

    def unfuse_lora(self) -> "UnityVideoPipeline":
        self._require_lora()
        lora.unfuse_lora(self.transformer)
        return self

    def _require_lora(self) -> None:
        if not lora.has_lora(self.transformer):
            raise ValueError("the transformer has no LoRA adapter: load a LoRA export or call load_lora_weights")

    def enable_vae_tiling(self) -> "UnityVideoPipeline":
        """Decode / encode the Wan VAE in spatial tiles (diffusers' AutoencoderKLWan tiling): less memory
        at large sizes. The pixel codecs need none."""
        vae = getattr(self.codec, "vae", None)
        if vae is None or not hasattr(vae, "enable_tiling"):
            raise ValueError(f"{type(self.codec).__name__} has no tiling; only the Wan VAE codecs tile")
        vae.enable_tiling()
        return self

    @contextlib.contextmanager
    def _running(self, module):
        """With model CPU offload: `module` on the offload device for the duration, then back to the CPU."""
        if self._offload_device is None:
            yield
            return
        module.to(self._offload_device)
        try:
            yield
        finally:
            module.to("cpu")
            if self._offload_device.type == "cuda":
                torch.cuda.empty_cache()

    @property
    def dtype(self) -> torch.dtype:
        """The transformer's compute dtype. Not `transformer.dtype`: under bf16 the AdaLN tables stay
        fp32 and may come first."""
        return self.transformer.backbone.patch_embedding.weight.dtype

    def set_progress_bar_config(self, **kwargs) -> None:
        """tqdm options for the denoising progress bar, e.g. disable=True (as in diffusers)."""
        self._progress_config = kwargs

    @torch.inference_mode()
    def __call__(
        self,
        prompt: str | Sequence[str] | None = None,
        task: str = "t2v",
        modalities: Sequence[str] = (),
        conditions: Mapping[str, np.ndarray | torch.Tensor] | None = None,
        video: np.ndarray | torch.Tensor | None = None,
        negative_prompt: str | Sequence[str] = "",
        num_frames: int | None = None,
        height: int | None = None,
        width: int | None = None,
        num_inference_steps: int = 50,
        guidance_scale: float | None = None,
        modality_guidance_scale: float | None = None,
        shift: float | None = None,
        generator: Generator = None,
        decode_hints: Mapping[str, Mapping[str, Any]] | None = None,
        output_type: str = "np",
        batch_cfg: bool = True,
        cache_condition: bool = False,
        ensemble_size: int = 1,
        num_videos_per_prompt: int = 1,
        callback_on_step_end: Callable[["UnityVideoPipeline", int, Any, dict], dict] | None = None,
    ) -> UnityVideoPipelineOutput:
        """Generate (or estimate) the target streams of `task`.

        prompt: caption(s) for the RGB stream; a list is a batch ("" for none).
        modalities: modalities to generate (joint, estimate); for control the keys of `conditions`.
        conditions: stream name -> video, uint8 (F, H, W, 3) / (B, F, H, W, 3) or float in [-1, 1]
            (3, F, H, W) / (B, 3, F, H, W): the modality videos of control. video: the RGB video of estimate.
        num_frames, height, width: default from the condition videos, else the checkpoint's.
        guidance_scale: text guidance (default per task, DEFAULT_GUIDANCE); modality_guidance_scale:
            guidance on the condition streams (control, estimate); 1.0 / None = off (see module doc).
        shift: timestep shift (default: the checkpoint's). generator: one, or one per sample.
        decode_hints: modality -> hints for get_modality(m).decode (defaults: depth near=1.0, i.e.
            relative depth; flow max_flow = max(H, W) / 8).
        output_type: "np" (uint8 frames (B, F, H, W, 3) + raw), "pt" (float frames (B, F, 3, H, W) in
            [0, 1] + raw), "pil" (per sample a list of PIL images + raw) or "latent" (latents only).
        num_videos_per_prompt: samples per prompt (each with its own noise); the batch grows N times.
        callback_on_step_end: called after every denoising step as f(pipe, step, timestep, {"latents":
            x}) with x the targets (B, T, C, F, H, W); a returned {"latents": ...} replaces them
            (diffusers' convention). One-step estimation calls it once.
        batch_cfg: run the guidance passes as one batched forward (False: one forward each, less memory).
        cache_condition: compute the condition streams' keys and values once and reuse them in every
            step (control, estimate; needs a transformer trained with condition_isolation=True).
        ensemble_size: estimate only: sample K estimates from K noises and combine them
            (`Modality.combine`: per-pixel median of continuous encodings, vote of DensePose parts,
            medoid of segmentation and skeleton pictures), the test-time ensemble of diffusion-based
            estimators. The first member is the K = 1 result of the same generator; `latents` holds
            that member's. One-step estimation (`pipe.estimate_mode`) ignores it and num_inference_steps.
        """
        conditions = dict(conditions or {})
        if video is not None:
            if task != "estimate":
                raise ValueError("video= is the RGB input of task='estimate'; for control pass conditions=")
            conditions[RGB] = video
        conditions = {canonical_name(k): v for k, v in conditions.items()}
        plan = plan_streams(task, modalities, list(conditions),
                            self.spec.tasks if self.spec else None,
                            self.spec.modalities if self.spec else self.transformer.stream_names[1:])
        if self.spec is not None:
            check_encodings(self.spec.encodings, [n for n in plan.target_names + plan.condition_names if n != RGB],
                            "this checkpoint", "fine-tune it on data made by this version "
                            "(`unityvideo train ... model.init=<checkpoint>`)")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type={output_type!r}; choose one of {OUTPUT_TYPES}")
        if num_videos_per_prompt < 1:
            raise ValueError(f"num_videos_per_prompt must be >= 1, got {num_videos_per_prompt}")
        if num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        g_text = DEFAULT_GUIDANCE[task] if guidance_scale is None else float(guidance_scale)
        g_mod = 1.0 if modality_guidance_scale is None else float(modality_guidance_scale)
        if g_mod != 1.0 and not plan.condition_names:
            raise ValueError(f"modality_guidance_scale applies to control and estimate (a condition stream); "
                             f"task {task!r} has none")
        if cache_condition:
            self._check_cache_condition(plan)
        one_step = task == "estimate" and self.estimate_mode == "one_step"
        _check_ensemble(ensemble_size, task, "np" if one_step else output_type)  # one step: the size is ignored
        if one_step:
            num_inference_steps, ensemble_size = self._one_step_counts(num_inference_steps, ensemble_size)

        videos = {name: _as_video(conditions[name], name) for name in plan.condition_names}
        batch = _batch_size(prompt, videos)
        captions = _as_list(prompt if prompt is not None else "", batch, "prompt")
        if task == "estimate" and not self.estimate_caption and any(captions):
            self._note_once("caption", "this checkpoint learned estimation without a caption "
                            "(estimate_caption false): the prompt is not given to the model")
            captions = [""] * batch
        negatives = _as_list(negative_prompt, batch, "negative_prompt")
        if num_videos_per_prompt > 1:
            n = num_videos_per_prompt
            captions, negatives = ([t for t in texts for _ in range(n)] for texts in (captions, negatives))
            videos = {k: v.expand(batch, -1, -1, -1, -1).repeat_interleave(n, dim=0) for k, v in videos.items()}
            batch *= n
        frames, height, width = self._geometry(videos, num_frames, height, width)
        latent_shape = check_geometry(self.codec.geometry, self.transformer.config.patch_size,
                                      self.transformer.config.rope_max_seq_len, frames, height, width,
                                      len(plan.streams))

        device = self.device
        with self._running(self.codec):
            clean = {name: self.latent_norm.normalize(self.codec.encode(v.expand(batch, -1, -1, -1, -1).to(device)),
                                                      name).float() for name, v in videos.items()}
        passes = ["cond"] + (["text"] if g_text != 1.0 else []) + (["modality"] if g_mod != 1.0 else [])
        with self._running(self.text_encoder):
            contexts = self._contexts(plan, captions, negatives, "text" in passes)

        with self._running(self.transformer):
            caches = self._condition_caches(plan, clean, contexts, passes, batch, batch_cfg) if cache_condition else {}
            request = _Request(plan, clean, contexts, _Guidance(passes, g_text, g_mod, batch_cfg, caches))
            shape = (batch, len(plan.target_names), *latent_shape)
            members = [self._estimate_once(request, shape, generator, callback_on_step_end)] if one_step else \
                [self._denoise(request, shape, num_inference_steps, shift, generator, callback_on_step_end)
                 for _ in range(ensemble_size)]
        latents = [{**{name: x[:, k] for k, name in enumerate(plan.target_names)}, **clean} for x in members]
        latents = [{name: member[name] for name in plan.streams} for member in latents]
        if output_type == "latent":
            return UnityVideoPipelineOutput(frames={}, raw={}, latents=latents[0])
        with self._running(self.codec):
            videos = [self._frames(plan, member) for member in latents]
        if ensemble_size > 1:
            videos = [{name: np.stack([get_modality(name).combine([m[name][b] for m in videos]) for b in range(batch)])
                       for name in plan.target_names}]
        output = self._decode(plan, videos[0], latents[0], height, width, decode_hints or {})
        output.frames = {name: _as_output_type(frames, output_type) for name, frames in output.frames.items()}
        return output

    # ----- steps of __call__ ---------------------------------------------------------------------

    def _one_step_counts(self, steps: int, ensemble_size: int) -> tuple[int, int]:
        """One-step estimation runs one step and one member whatever was asked (callers such as eval pass
        per-modality counts for generative checkpoints); says so once per distinct request."""
        if (steps, ensemble_size) != (1, 1):
            self._note_once(("one_step", steps, ensemble_size),
                            f"one-step estimation: num_inference_steps={steps} and ensemble_size={ensemble_size} "
                            "ignored (a deterministic estimate takes one step and needs no ensemble)")
        return 1, 1

    def _geometry(self, videos: dict[str, torch.Tensor], frames: int | None, height: int | None,
                  width: int | None) -> tuple[int, int, int]:
        """(F, H, W): the condition videos', else the arguments, else the checkpoint's defaults."""
        shapes = {name: tuple(v.shape[2:]) for name, v in videos.items()}
        if len(set(shapes.values())) > 1:
            raise ValueError(f"condition videos differ in (frames, height, width): {shapes}; give aligned videos")
        if shapes:
            given = next(iter(shapes.values()))
            wanted = (frames or given[0], height or given[1], width or given[2])
            if wanted != given:
                raise ValueError(f"num_frames/height/width {wanted} differ from the condition videos' {given}; "
                                 "leave them unset or resize the videos first")
            return given
        default_size = tuple(self.spec.size) if self.spec else (None, None)
        out = (frames or (self.spec.frames if self.spec else None), height or default_size[0],
               width or default_size[1])
        if None in out:
            raise ValueError("num_frames, height and width are needed (the pipeline has no checkpoint spec)")
        return out

    def _modality_prompt(self, name: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(1, L, D) features and mask (or None) of a modality's in-context prompt, encoded once."""
        if name not in self._prompt_cache:
            template = self.spec.modality_prompt_template if self.spec else "{prompt}"
            prompt = (self.spec.modality_prompts.get(name) if self.spec else None) or \
                template.format(prompt=get_modality(name).prompt)
            self._prompt_cache[name] = self.text_encoder.model_inputs([prompt], convention=self.text_convention)
        return self._prompt_cache[name]

    def _contexts(self, plan: StreamPlan, captions: list[str], negatives: list[str], with_negative: bool):
        """Per stream and pass: (features (B, L, D), mask (B, L)) on the model's device and dtype.
        Captions and negative prompts are encoded together so both pad to one length."""
        batch = len(captions)
        texts = captions + (negatives if with_negative else [])
        features, mask = self.text_encoder.model_inputs(texts, convention=self.text_convention)
        caption = (features[:batch], None if mask is None else mask[:batch])
        negative = (features[batch:], None if mask is None else mask[batch:]) if with_negative else caption
        out = {}
        for name in plan.streams:
            if name == RGB:
                out[name] = {"cond": caption, "modality": caption, "text": negative}
            else:
                f, m = self._modality_prompt(name)
                same = (f.expand(batch, -1, -1), None if m is None else m.expand(batch, -1))
                out[name] = {"cond": same, "text": same, "modality": same}
        dtype, device = self.dtype, self.device
        return {n: {p: (f.to(device, dtype), None if m is None else m.to(device)) for p, (f, m) in d.items()}
                for n, d in out.items()}

    def _check_cache_condition(self, plan: StreamPlan) -> None:
        if not plan.condition_names:
            raise ValueError(f"cache_condition applies to control and estimate (tasks with a clean condition "
                             f"stream); task {plan.task!r} has none")
        if not self.transformer.config.condition_isolation:
            raise ValueError("cache_condition=True needs a transformer trained with condition_isolation=True; in "
                             "this one the condition streams attend to the noisy ones, so their keys change "
                             "every step and cannot be cached. Run without cache_condition.")

    def _condition_caches(self, plan: StreamPlan, clean: dict, contexts: dict, passes: list[str],
                          batch: int, batch_cfg: bool) -> dict[tuple[str, ...], ConditionCache]:
        """A ConditionCache per forward group (see `_forward_groups`) of the guidance passes whose
        conditions are clean (every pass but "modality", where they are noise). Passes whose condition
        streams see the same contexts share one cache; others are stacked along the batch, once."""
        caches: dict[str, ConditionCache] = {}
        for kind in passes:
            if kind == "modality":
                continue
            twin = next((k for k in caches if all(_same_context(contexts[n][k], contexts[n][kind])
                                                  for n in plan.condition_names)), None)
            if twin is not None:
                caches[kind] = caches[twin]
                continue
            zeros = torch.zeros(batch, device=self.device)
            layout = [Stream(n, clean[n].to(self.dtype), zeros, *contexts[n][kind]) if n in clean else n
                      for n in plan.streams]
            caches[kind] = self.transformer.cache_conditions(layout)
        groups = _forward_groups(passes, set(caches), batch_cfg)
        return {tuple(g): _stack_caches([caches[k] for k in g]) for g in groups if g[0] in caches}

    def _pass_streams(self, request: _Request, x: torch.Tensor, sigma: float, kind: str,
                      cached: bool = False) -> list[Stream]:
        """The streams of one guidance pass: targets at t = sigma, conditions clean at t = 0, or (the
        modality-unconditional pass) replaced by noise at t = 1. cached: targets only (the conditions
        are in a ConditionCache)."""
        streams, k = [], 0
        batch = x.shape[0]
        plan, clean, dropped, contexts = request.plan, request.clean, request.dropped, request.contexts
        for name, is_target in zip(plan.streams, plan.targets):
            if is_target:
                latent, t = x[:, k], sigma
                k += 1
            elif cached:
                continue
            elif kind == "modality":
                latent, t = dropped[name], 1.0
            else:
                latent, t = clean[name], 0.0
            feats, mask = contexts[name][kind]
            streams.append(Stream(name, latent.to(self.dtype),
                                  torch.full((batch,), t, device=x.device), feats, mask))
        return streams

    def _predict(self, streams: list[Stream], plan: StreamPlan, cache: ConditionCache | None = None) -> torch.Tensor:
        """Target velocities (B, T, C, F, H, W) in fp32 from one forward."""
        if cache is not None:  # the streams are the targets already
            return torch.stack(self.transformer(streams, condition_cache=cache), dim=1).float()
        out = self.transformer(streams)
        return torch.stack([v for v, t in zip(out, plan.targets) if t], dim=1).float()

    def _guided_velocity(self, request: _Request, x: torch.Tensor, sigma: float) -> torch.Tensor:
        guidance = request.guidance
        cached_kinds = {k for group in guidance.caches for k in group}
        v = {}
        for kinds in _forward_groups(guidance.passes, cached_kinds, guidance.batch_cfg):
            cache = guidance.caches.get(tuple(kinds))
            per_pass = [self._pass_streams(request, x, sigma, kind, cache is not None) for kind in kinds]
            if len(per_pass) == 1:
                streams = per_pass[0]
            else:  # one forward: the passes stacked along the batch
                streams = [_cat_streams([p[s] for p in per_pass]) for s in range(len(per_pass[0]))]
            v.update(zip(kinds, self._predict(streams, request.plan, cache).chunk(len(kinds), dim=0)))
        return guidance.combine(v)

    def _denoise(self, request: _Request, noise_shape: tuple[int, ...], steps: int, shift: float | None,
                 generator: Generator, callback=None) -> torch.Tensor:
        """One sample of the targets (B, T, C, F, H, W), integrated from noise at t = 1 to t = 0."""
        # Noise for the targets first, then for the dropped conditions: the targets' noise depends only
        # on the seed, not on whether modality guidance is on.
        x = randn_tensor(noise_shape, generator=generator, device=self.device, dtype=torch.float32)
        request = dataclasses.replace(request, dropped=self._dropped_conditions(request, noise_shape, generator))
        plan = request.plan
        scheduler = _fresh_scheduler(self.scheduler, self.spec.shift if shift is None and self.spec else shift)
        scheduler.set_timesteps(steps, device=self.device)
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        for i, timestep in enumerate(tqdm(scheduler.timesteps, desc=f"{plan.task} denoising", **self._progress_config)):
            sigma = float(scheduler.sigmas[i])
            velocity = self._guided_velocity(request, x, sigma)
            x = scheduler.step(velocity, timestep, x, return_dict=False)[0].float()
            x = self._step_end(callback, i, timestep, x)
        return x

    def _step_end(self, callback, step: int, timestep, x: torch.Tensor) -> torch.Tensor:
        if callback is None:
            return x
        returned = callback(self, step, timestep, {"latents": x}) or {}
        return returned.get("latents", x)

    def _estimate_once(self, request: _Request, shape: tuple[int, ...], generator: Generator,
                       callback=None) -> torch.Tensor:
        """One-step deterministic estimation (B, T, C, F, H, W): the targets start from zeros at t = 1
        exactly and one Euler step to t = 0 gives x_0 = x_1 - 1 * v = -v, as trained (flow.py)."""
        x = torch.zeros(shape, device=self.device, dtype=torch.float32)
        request = dataclasses.replace(request, dropped=self._dropped_conditions(request, shape, generator))
        velocity = self._guided_velocity(request, x, 1.0)
        start = torch.tensor(float(self.scheduler.config.num_train_timesteps))  # t = 1, as _denoise reports a step
        return self._step_end(callback, 0, start, x - velocity)

    def _dropped_conditions(self, request: _Request, noise_shape: tuple[int, ...],
                            generator: Generator) -> dict[str, torch.Tensor]:
        """The noise that replaces each condition stream in the modality-unconditional pass (if any)."""
        plan = request.plan
        if "modality" not in request.guidance.passes:
            return {}
        z = randn_tensor((noise_shape[0], len(plan.condition_names), *noise_shape[2:]), generator=generator,
                         device=self.device, dtype=torch.float32)
        return {name: z[:, i] for i, name in enumerate(plan.condition_names)}

    def _frames(self, plan: StreamPlan, latents: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        """Each target latent decoded to its uint8 video (B, F, H, W, 3)."""
        frames = {}
        for name in plan.target_names:
            video = self.codec.decode(self.latent_norm.denormalize(latents[name], name)).float()  # in [-1, 1]
            frames[name] = (video.add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8)
                            .permute(0, 2, 3, 4, 1).cpu().numpy())
        return frames

    def _decode(self, plan: StreamPlan, frames: dict[str, np.ndarray], latents: dict[str, torch.Tensor],
                height: int, width: int, decode_hints: Mapping[str, Mapping[str, Any]]) -> UnityVideoPipelineOutput:
        raw, hints = {}, {}
        for name in plan.target_names:
            if name == RGB:
                continue
            hints[name] = {**picture_hints((height, width)), **dict(decode_hints.get(name, {}))}
            raw[name] = [get_modality(name).decode(f, **hints[name]) for f in frames[name]]
        return UnityVideoPipelineOutput(frames=frames, raw=raw, latents=latents, hints=hints)


# ----- small helpers ---------------------------------------------------------------------------------


@dataclass
class _Guidance:
    """How a request is guided: its passes ("cond", then "text" and "modality" when their scales are not
    1), the two scales, whether the passes share one batched forward, and the condition caches per
    forward group (`_condition_caches`; empty without cache_condition)."""

    passes: list[str]
    text_scale: float
    modality_scale: float
    batch_cfg: bool
    caches: dict[tuple[str, ...], ConditionCache] = field(default_factory=dict)

    def combine(self, v: dict[str, torch.Tensor]) -> torch.Tensor:
        """Classifier-free guidance over the passes' velocities."""
        guided = v["cond"]
        if "text" in v:
            guided = guided + (self.text_scale - 1.0) * (v["cond"] - v["text"])
        if "modality" in v:
            guided = guided + (self.modality_scale - 1.0) * (v["cond"] - v["modality"])
        return guided


@dataclass
class _Request:
    """What every denoising step of one call reads: the stream plan, the clean condition latents, the
    text contexts per stream and pass, the guidance, and (per ensemble member) the noise that replaces
    the conditions in the modality-unconditional pass."""

    plan: StreamPlan
    clean: dict[str, torch.Tensor]
    contexts: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor | None]]]
    guidance: _Guidance
    dropped: dict[str, torch.Tensor] = field(default_factory=dict)


def _check_ensemble(size: int, task: str, output_type: str) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"ensemble_size must be an integer >= 1, got {size!r}")
    if size > 1 and task != "estimate":
        raise ValueError(f"ensemble_size={size} combines estimates; task {task!r} generates, and a per-pixel "
                         "combination of samples is not a sample (use ensemble_size=1)")
    if size > 1 and output_type == "latent":
        raise ValueError(f"ensemble_size={size} combines decoded videos; use output_type 'np', 'pt' or 'pil'")


OUTPUT_TYPES = ("np", "pt", "pil", "latent")


def _as_output_type(frames: np.ndarray, output_type: str):
    """uint8 (B, F, H, W, 3) as asked: np as is, pt float (B, F, 3, H, W) in [0, 1], pil lists of images."""
    if output_type == "pt":
        return torch.from_numpy(frames).permute(0, 1, 4, 2, 3).float().div(255.0)
    if output_type == "pil":
        from PIL import Image

        return [[Image.fromarray(frame) for frame in video] for video in frames]
    return frames


def _as_video(value: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    """A condition video as float (B, 3, F, H, W) in [-1, 1]."""
    if isinstance(value, np.ndarray):
        if value.dtype != np.uint8 or value.ndim not in (4, 5) or value.shape[-1] != 3:
            raise ValueError(f"condition {name!r}: a numpy video must be uint8 (F, H, W, 3) or (B, F, H, W, 3), "
                             f"got {value.dtype} {value.shape}")
        video = torch.from_numpy(np.ascontiguousarray(value)).float().div(127.5).sub(1.0)
        video = video.unsqueeze(0) if video.ndim == 4 else video
        return video.permute(0, 4, 1, 2, 3)
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim in (4, 5):
        video = value.unsqueeze(0) if value.ndim == 4 else value
        if video.shape[1] != 3:
            raise ValueError(f"condition {name!r}: a tensor video must be (B, 3, F, H, W), got {tuple(value.shape)}")
        return video.float()
    raise ValueError(f"condition {name!r}: expected a uint8 numpy video (F, H, W, 3) or a float tensor "
                     f"(B, 3, F, H, W) in [-1, 1], got {type(value).__name__}")


def _batch_size(prompt: str | Sequence[str] | None, videos: dict[str, torch.Tensor]) -> int:
    sizes = {v.shape[0] for v in videos.values()} - {1}
    if prompt is not None and not isinstance(prompt, str):
        sizes.add(len(prompt))
    if len(sizes) > 1:
        raise ValueError(f"batch sizes disagree: prompts and condition videos give {sorted(sizes)}")
    return sizes.pop() if sizes else 1


def _as_list(text: str | Sequence[str], batch: int, what: str) -> list[str]:
    texts = [text] * batch if isinstance(text, str) else list(text)
    if len(texts) != batch:
        raise ValueError(f"{what}: {len(texts)} texts for a batch of {batch}")
    return texts


def _forward_groups(passes: list[str], cached: set[str], batch_cfg: bool) -> list[list[str]]:
    """Which guidance passes share a forward: all of them when batched, except that passes served by a
    condition cache (targets only) and passes without one (every stream) have different streams."""
    if not batch_cfg:
        return [[kind] for kind in passes]
    with_cache = [k for k in passes if k in cached]
    without = [k for k in passes if k not in cached]
    return [group for group in (with_cache, without) if group]


def _stack_caches(caches: list[ConditionCache]) -> ConditionCache:
    """One cache for passes stacked along the batch: a shared cache is repeated by the model itself."""
    if all(c is caches[0] for c in caches):
        return caches[0]
    return ConditionCache.cat(caches)


def _same_context(a: tuple[torch.Tensor, torch.Tensor | None], b: tuple[torch.Tensor, torch.Tensor | None]) -> bool:
    same_mask = (a[1] is None and b[1] is None) or (a[1] is not None and b[1] is not None and torch.equal(a[1], b[1]))
    return same_mask and a[0].shape == b[0].shape and torch.equal(a[0], b[0])


def _cat_streams(streams: list[Stream]) -> Stream:
    """One stream of several passes, stacked along the batch (contexts padded to one length)."""
    length = max(s.context.shape[1] for s in streams)

    def pad(t: torch.Tensor, value) -> torch.Tensor:  # along dim 1 (tokens)
        return torch.nn.functional.pad(t, (0, 0) * (t.ndim - 2) + (0, length - t.shape[1]), value=value)

    if all(s.context_mask is None and s.context.shape[1] == length for s in streams):
        mask = None  # every token of every pass attended (the zero-padded convention)
    else:
        mask = torch.cat([pad(s.context_mask if s.context_mask is not None else
                              torch.ones(s.context.shape[:2], dtype=torch.bool, device=s.context.device), False)
                          for s in streams])
    return Stream(streams[0].modality, torch.cat([s.latent for s in streams]),
                  torch.cat([torch.as_tensor(s.timestep) for s in streams]),
                  torch.cat([pad(s.context, 0.0) for s in streams]), mask)


def read_transformer_config(folder: str | Path) -> dict:
    """DIR/transformer/config.json (patch size, RoPE length) without loading weights."""
    return json.loads((Path(folder) / TRANSFORMER_DIR / "config.json").read_text())
