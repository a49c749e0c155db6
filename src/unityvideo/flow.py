"""Flow matching and UnityVideo's task routing (dynamic noise), as small separate pieces.

- `FlowPath`: x_t = (1 - t) x_0 + t eps, target velocity v = eps - x_0 (t = 1 is noise).
- `TimestepSampler`: uniform or logit-normal t, then Wan's shift t' = s t / (1 + (s - 1) t).
- `RoutingConfig` + `draw_route`: per sample, a task (control / estimate / joint / t2v), a modality and a
  timestep per stream. Condition streams get t = 0 (clean), target streams a sampled t.
- `route_batch`: noisy inputs, per-stream targets and loss weights as model `Stream`s, grouped by
  modality (one model call per group; tasks mix freely inside a group since every stream has a
  per-sample timestep).
- `flow_loss`: per-sample MSE over the noisy streams only (L1 where a one-step estimate asks for it).

The paper's three losses, in this notation (r = RGB latent, m = modality latent, c = caption):

    control   L_cond  = || u(r_t, [m_0, c], t)  - v_r ||^2      rgb noisy, modality clean
    estimate  L_est   = || u(m_t, r_0, t)       - v_m ||^2      modality noisy, rgb clean
    joint     L_joint = || u([r_t, m_t], c, t)  - [v_r, v_m] ||^2  both noisy, each its own t
    t2v       plain flow matching on r alone (no modality stream)

Beyond the paper, `estimate_mode: one_step` trains estimation as one deterministic step (Lotus; Garcia
et al. 2024): the modality stream of an `estimate` sample gets t = 1 and a zero "noise", so its input is
all zeros, the model's x_0 prediction is x_t - t v = -v and the velocity target is -m_0. The velocity
error then equals the x_0 error, so the same head and the same flow loss train x_0 directly (L2, or L1
per modality with `estimate_loss`). The draws of a sample do not change with the mode; only the
estimate's t and noise are overridden.

Every random draw of a sample comes from a generator seeded by (seed, global sample number), so a
sample gets the same task, timesteps, dropout and noise whatever the number of processes, micro-batch
size or resume point: that is what makes multi-process and resumed runs reproduce single-process ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from .models.checkpoint import ESTIMATE_MODES
from .models.transformer import RGB, Stream



@dataclass(frozen=True)
class Task:
    """What a task does with the two streams, for training and inference alike (the one task table).

    noisy_*: the stream is generated (noised, in the loss) rather than given clean (t = 0);
    has_modality: the task has a modality stream (t2v does not); caption_if_trained: the RGB caption
    reaches the model only if the checkpoint learned the task with one (`estimate_caption`)."""

    name: str
    noisy_rgb: bool
    noisy_modality: bool
    has_modality: bool = True
    caption_if_trained: bool = False

    @property
    def condition(self) -> str | None:
        """The clean stream that conditions the task ("rgb" or "modality"), None when there is none."""
        if not self.noisy_rgb:
            return "rgb"
        return "modality" if self.has_modality and not self.noisy_modality else None


TASK_TABLE: dict[str, Task] = {t.name: t for t in (
    Task("control", noisy_rgb=True, noisy_modality=False),
    Task("estimate", noisy_rgb=False, noisy_modality=True, caption_if_trained=True),
    Task("joint", noisy_rgb=True, noisy_modality=True),
    Task("t2v", noisy_rgb=True, noisy_modality=False, has_modality=False),
)}
TASKS = tuple(TASK_TABLE)
TIMESTEP_SAMPLERS = ("uniform", "logit_normal")
ESTIMATE_LOSSES = ("l2", "l1")

# Text encoder: list of strings -> (features (B, L, D), mask (B, L)).
EncodeText = Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]


# ----- path ---------------------------------------------------------------------------------------


class FlowPath:
    """The straight (rectified-flow) path between data x_0 (t = 0) and noise eps (t = 1)."""

    @staticmethod
    def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x_t = (1 - t) x_0 + t eps, with t (B,) broadcast over the other dims."""
        t = _per_sample(t, x0)
        return (1 - t) * x0 + t * noise

    @staticmethod
    def velocity(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """d x_t / dt = eps - x_0, the regression target."""
        return noise - x0


def _per_sample(t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return t.to(like.dtype).reshape(-1, *([1] * (like.ndim - 1)))


# ----- timesteps ----------------------------------------------------------------------------------


def shift_timesteps(t: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift: s t / (1 + (s - 1) t); s > 1 spends more steps near noise."""
    if shift == 1.0:
        return t
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class TimestepSampler:
    """t in [0, 1]: `uniform`, or `logit_normal` (sigmoid of N(mean, std), SD3's choice), then shifted."""

    kind: str = "logit_normal"
    mean: float = 0.0
    std: float = 1.0
    shift: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TIMESTEP_SAMPLERS:
            raise ValueError(f"timesteps.kind={self.kind!r}; choose one of {TIMESTEP_SAMPLERS}")
        if not (math.isfinite(self.mean) and 0 < self.std < math.inf and 0 < self.shift < math.inf):
            raise ValueError(f"routing.timesteps: mean ({self.mean}) must be finite, std ({self.std}) and shift "
                             f"({self.shift}) finite and positive")

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.kind == "uniform":
            t = torch.rand(n, generator=generator)
        else:
            t = torch.sigmoid(self.mean + self.std * torch.randn(n, generator=generator))
        return shift_timesteps(t, self.shift)


# ----- routing ------------------------------------------------------------------------------------


@dataclass
class RoutingConfig:
    """How each training sample is turned into a task.

    tasks: probability of each task (normalised; the paper's order p_control < p_estimate < p_joint).
    modalities: sampling weight of each modality (normalised); the curriculum sets it per stage.
    tie_joint_timesteps: joint generation with one t for both streams (the authors' code) instead
        of independent t per stream (the paper's dynamic noise).
    caption_dropout: probability of an empty caption (classifier-free guidance on the text).
    prompt_dropout: probability of an empty modality prompt (guidance on the in-context prompt).
    estimate_caption: give the RGB condition of `estimate` its caption (the paper's L_est has none).
    modality_prompt_template: how a modality prompt is written, e.g. "a video of {prompt}".
    estimate_mode: "generative" (the paper's L_est: the modality denoised from a sampled t) or
        "one_step" (x_0 predicted in one deterministic step from t = 1 and a zero input; module doc).
    estimate_loss: one_step only: modality -> "l2" (default for every modality) or "l1", the loss of
        its one-step estimate.
    """

    tasks: dict[str, float] = field(default_factory=lambda: {"control": 0.2, "estimate": 0.3, "joint": 0.5,
                                                             "t2v": 0.0})
    modalities: dict[str, float] = field(default_factory=lambda: {"depth": 1.0, "flow": 1.0, "densepose": 1.0})
    timesteps: TimestepSampler = field(default_factory=TimestepSampler)
    tie_joint_timesteps: bool = False
    caption_dropout: float = 0.1
    prompt_dropout: float = 0.1
    estimate_caption: bool = False
    modality_prompt_template: str = "{prompt}"
    estimate_mode: str = "generative"
    estimate_loss: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.timesteps, dict):
            self.timesteps = TimestepSampler(**self.timesteps)
        _check_weights("tasks", self.tasks, TASKS)
        from .modalities import MODALITY_NAMES
        _check_weights("modalities", self.modalities, MODALITY_NAMES, allow_empty=self.only_t2v)
        for name in ("caption_dropout", "prompt_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name}={getattr(self, name)} must be in [0, 1]")
        self._check_estimate_options()

    def _check_estimate_options(self) -> None:
        from .modalities import MODALITY_NAMES
        if self.estimate_mode not in ESTIMATE_MODES:
            raise ValueError(f"estimate_mode={self.estimate_mode!r}; choose one of {ESTIMATE_MODES}")
        unknown = sorted(set(self.estimate_loss) - set(MODALITY_NAMES))
        if unknown:
            raise ValueError(f"estimate_loss: unknown modalities {unknown}; valid names are {list(MODALITY_NAMES)}")
        bad = {m: v for m, v in self.estimate_loss.items() if v not in ESTIMATE_LOSSES}
        if bad:
            raise ValueError(f"estimate_loss: {bad}; each modality's loss is one of {ESTIMATE_LOSSES}")
        if self.estimate_mode != "one_step" and "l1" in self.estimate_loss.values():
            raise ValueError(f"estimate_loss={self.estimate_loss} applies to estimate_mode=one_step only (the "
                             "generative L_est is the MSE to the velocity); set estimate_mode=one_step or drop it")

    def one_step(self, task: str) -> bool:
        """Whether samples of `task` are one-step deterministic estimates."""
        return task == "estimate" and self.estimate_mode == "one_step"

    def estimate_l1(self, modality: str | None) -> bool:
        return self.estimate_loss.get(modality, "l2") == "l1"

    @property
    def only_t2v(self) -> bool:
        return all(p == 0 for task, p in self.tasks.items() if task != "t2v")

    def modality_prompt(self, modality: str) -> str:
        from .modalities import get_modality
        return self.modality_prompt_template.format(prompt=get_modality(modality).prompt)


def _check_weights(name: str, weights: dict[str, float], valid: Sequence[str], allow_empty: bool = False) -> None:
    unknown = sorted(set(weights) - set(valid))
    if unknown:
        raise ValueError(f"{name}: unknown {unknown}; valid names are {list(valid)}")
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise ValueError(f"{name}: weights must be finite and >= 0, got {weights}")
    if sum(weights.values()) <= 0 and not allow_empty:
        raise ValueError(f"{name}: at least one weight must be positive, got {weights}")


@dataclass
class Route:
    """One sample's draw: its task, modality (None for t2v), per-stream t and dropout decisions.
    deterministic: a one-step estimate (t_modality = 1, zero modality noise)."""

    task: str
    modality: str | None
    t_rgb: float
    t_modality: float
    drop_caption: bool
    drop_prompt: bool
    deterministic: bool = False

    @property
    def noisy_rgb(self) -> bool:
        return TASK_TABLE[self.task].noisy_rgb

    @property
    def noisy_modality(self) -> bool:
        return TASK_TABLE[self.task].noisy_modality


def sample_generator(seed: int, sample: int) -> torch.Generator:
    """The generator of global sample number `sample` (independent of processes and batching)."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(sample)) % (2**63 - 1))


def _choice(weights: dict[str, float], generator: torch.Generator) -> str:
    names = list(weights)
    probs = torch.tensor([float(weights[n]) for n in names], dtype=torch.float64)
    return names[int(torch.multinomial(probs / probs.sum(), 1, generator=generator))]


def draw_route(config: RoutingConfig, generator: torch.Generator) -> Route:
    """Pick a task, a modality and timesteps for one sample. The draws always happen in the same
    order and number, so a sample's noise (drawn next from the same generator) does not depend on
    which task it got."""
    task = _choice(config.tasks, generator)
    modality = _choice(config.modalities, generator) if config.modalities and sum(config.modalities.values()) > 0 else None
    t_rgb, t_mod = config.timesteps.sample(2, generator).tolist()
    drop_caption, drop_prompt = (torch.rand(2, generator=generator) < torch.tensor(
        [config.caption_dropout, config.prompt_dropout])).tolist()
    if not TASK_TABLE[task].has_modality:
        modality = None
    elif modality is None:
        raise ValueError(f"task {task!r} needs a modality but the modality weights are all zero")
    if task == "joint" and config.tie_joint_timesteps:
        t_mod = t_rgb
    return _route(config, task, modality, t_rgb, t_mod, bool(drop_caption), bool(drop_prompt))


def validation_route(config: RoutingConfig, task: str, modality: str | None, t: float) -> Route:
    """A validation sample's route: every target stream at `t`, no dropout; scored as it is trained
    (a one-step estimate at t = 1 with zero noise, whatever `t`)."""
    return _route(config, task, modality, t, t, False, False)


def _route(config, task, modality, t_rgb, t_mod, drop_caption, drop_prompt) -> Route:
    """Condition streams clean (t = 0), targets at their t; a one-step estimate's modality at t = 1."""
    one_step, spec = config.one_step(task), TASK_TABLE[task]
    return Route(task=task, modality=modality,
                 t_rgb=t_rgb if spec.noisy_rgb else 0.0,
                 t_modality=1.0 if one_step else t_mod if spec.noisy_modality else 0.0,
                 drop_caption=drop_caption, drop_prompt=drop_prompt, deterministic=one_step)


@dataclass
class RoutedGroup:
    """Samples of a batch that share one model call: same modality (or none, for t2v).

    indices: positions of the group's samples in the batch.
    streams: model inputs (rgb first, then the modality stream if any).
    targets: per-stream velocity targets.
    weights: per-stream (B_group,) loss weights: 1 where the stream is noisy (a target), 0 where it
        is a clean condition (its output is not a prediction and does not count).
    l1: per-stream (B_group,) bools: score with the mean absolute error instead of the MSE (the
        modality stream of one-step estimates whose `estimate_loss` is l1); empty = MSE everywhere.
    """

    modality: str | None
    indices: list[int]
    tasks: list[str]
    streams: list[Stream]
    targets: list[torch.Tensor]
    weights: list[torch.Tensor]
    l1: list[torch.Tensor] = field(default_factory=list)


def group_key(route: Route) -> str:
    return route.modality or RGB


def route_batch(
    config: RoutingConfig,
    routes: Sequence[Route],
    rgb: torch.Tensor,
    modality_latents: Sequence[torch.Tensor | None],
    noises: Sequence[tuple[torch.Tensor, torch.Tensor | None]],
    captions: Sequence[str],
    encode_text: EncodeText,
) -> list[RoutedGroup]:
    """Build each group's noisy streams, targets and loss weights.

    rgb: (B, C, F, H, W) clean RGB latents; modality_latents[i]: (C, F, H, W) clean latent of sample
    i's modality (None for t2v); noises[i]: (rgb noise, modality noise or None).
    """
    order: dict[str, list[int]] = {}
    for i, route in enumerate(routes):
        order.setdefault(group_key(route), []).append(i)
    return [_build_group(config, [routes[i] for i in idx], idx, rgb[idx],
                         [modality_latents[i] for i in idx], [noises[i] for i in idx],
                         [captions[i] for i in idx], encode_text)
            for idx in order.values()]


def _build_group(config, routes, indices, rgb, mod_latents, noises, captions, encode_text) -> RoutedGroup:
    modality = routes[0].modality
    t_rgb = torch.tensor([r.t_rgb for r in routes])
    rgb_noise = torch.stack([n[0] for n in noises]).to(rgb)
    caption_texts = [_caption_text(config, r, c) for r, c in zip(routes, captions)]
    context, mask = encode_text(caption_texts)
    streams = [Stream(RGB, FlowPath.interpolate(rgb, rgb_noise, t_rgb), t_rgb, context, mask)]
    targets = [FlowPath.velocity(rgb, rgb_noise)]
    weights = [torch.tensor([float(r.noisy_rgb) for r in routes])]
    l1 = [torch.zeros(len(routes), dtype=torch.bool)]
    if modality is not None:
        m0 = torch.stack(list(mod_latents)).to(rgb)
        # one-step estimates: zero noise at t = 1, so the input is 0 and the target -m0 (module doc)
        m_noise = torch.stack([torch.zeros_like(n[1]) if r.deterministic else n[1]
                               for r, n in zip(routes, noises)]).to(rgb)
        t_mod = torch.tensor([r.t_modality for r in routes])
        prompts = ["" if r.drop_prompt else config.modality_prompt(modality) for r in routes]
        context, mask = encode_text(prompts)
        streams.append(Stream(modality, FlowPath.interpolate(m0, m_noise, t_mod), t_mod, context, mask))
        targets.append(FlowPath.velocity(m0, m_noise))
        weights.append(torch.tensor([float(r.noisy_modality) for r in routes]))
        l1.append(torch.tensor([r.deterministic and config.estimate_l1(modality) for r in routes]))
    return RoutedGroup(modality=modality, indices=list(indices), tasks=[r.task for r in routes],
                       streams=streams, targets=targets, weights=weights, l1=l1)


def _caption_text(config: RoutingConfig, route: Route, caption: str) -> str:
    if route.drop_caption or (TASK_TABLE[route.task].caption_if_trained and not config.estimate_caption):
        return ""
    return caption


def flow_loss(predictions: Sequence[torch.Tensor], group: RoutedGroup) -> torch.Tensor:
    """Per-sample loss (B_group,): the MSE over the sample's noisy streams only (joint: the mean
    over both streams, i.e. || [u_r, u_m] - [v_r, v_m] ||^2 per element). A one-step estimate is
    scored the same way: with a zero input at t = 1, x0_hat = -v_hat and v = -m0, so the velocity
    error is the x_0 error, and its MSE (or, where `group.l1` says so, mean absolute error) is the
    x_0 loss itself, with no separate head."""
    total = torch.zeros(len(group.indices), dtype=torch.float32, device=predictions[0].device)
    count = torch.zeros_like(total)
    l1 = group.l1 or [torch.zeros(len(group.indices), dtype=torch.bool)] * len(predictions)
    for pred, target, weight, use_l1 in zip(predictions, group.targets, group.weights, l1):
        weight = weight.to(total.device)
        error = _stream_error(pred.float() - target.float(), use_l1.to(total.device))
        # where() rather than a product, so a clean stream's output never enters the loss, not even 0 * nan
        total = total + torch.where(weight > 0, error * weight, torch.zeros_like(error))
        count = count + weight
    return total / count.clamp_min(1.0)


def _stream_error(diff: torch.Tensor, use_l1: torch.Tensor) -> torch.Tensor:
    """Per-sample mean squared error, or mean absolute error where `use_l1` (B,)."""
    mse = diff.pow(2).flatten(1).mean(dim=1)
    if not use_l1.any():
        return mse
    return torch.where(use_l1, diff.abs().flatten(1).mean(dim=1), mse)
