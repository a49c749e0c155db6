"""Time one training step of UnityVideo per task, beside the plain-Wan and authors' baselines.

Random weights from a preset, random latents of the preset's codec geometry and random text features
(nothing is downloaded). Per task: step time (median of the timed steps after warm-up), tokens/s,
peak memory, model FLOPs (3 x the analytic forward, `forward_flops`) and MFU against this device's
measured matmul peak in the run's dtype.

Baselines in the same run, on the same weights:
- `wan`: diffusers' WanTransformer3DModel (the backbone itself, with Wan's own attention processor) on
  one latent as wide as the task's streams side by side: the same number of tokens, so the
  per-token overhead of UnityVideo is step time / Wan's step time - 1;
- `t2v-authors`: the authors' text-to-video scheme, both streams always present with one shared
  timestep (config shared_timestep=True), against our single-stream `t2v`.

    python benchmarks/train_step.py --preset wan2.1-t2v-1.3b --shape 33x256x256
    python benchmarks/train_step.py --preset tiny --shape 8x32x32 --steps 3      # CPU smoke run
    torchrun --nproc_per_node 8 benchmarks/train_step.py --preset wan2.2-ti2v-5b --fsdp
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as perf  # noqa: E402

from unityvideo.models import Stream, UnityVideoTransformer, forward_flops  # noqa: E402

TIMESTEP_SCALE = 1000.0


@dataclass(frozen=True)
class Task:
    """streams: modalities in model order; clean: per-sample patterns (cycled over the batch) of which
    streams are clean conditions (t = 0); shared_timestep: the authors' scheme."""

    streams: tuple[str, ...]
    clean: tuple[tuple[bool, ...], ...]
    shared_timestep: bool = False


TASKS = {
    "t2v": Task(("rgb",), ((False,),)),
    "joint": Task(("rgb", "depth"), ((False, False),)),
    "control": Task(("rgb", "depth"), ((False, True),)),
    "estimate": Task(("rgb", "depth"), ((True, False),)),
    # control and estimate samples in one call (a training group): the per-sample mask under isolation
    "mixed": Task(("rgb", "depth"), ((False, True), (True, False))),
    "t2v-authors": Task(("rgb", "depth"), ((False, False),), shared_timestep=True),
}
DEFAULT_TASKS = "t2v,joint,control,estimate,t2v-authors"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    perf.add_common_args(parser)
    parser.add_argument("--tasks", default=DEFAULT_TASKS, help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per task")
    parser.add_argument("--checkpointing", default="none",
                        help="activation checkpointing: none, full, or every-K (every K-th block)")
    parser.add_argument("--isolation", action="store_true",
                        help="train with condition_isolation=True (clean conditions attend only to clean streams)")
    parser.add_argument("--no-wan", action="store_true", help="skip the plain-Wan baseline")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 (launch with torchrun)")
    parser.add_argument("--master-weights", choices=("fp32", "bf16"), default="fp32",
                        help="fp32: weights, gradients and AdamW states in fp32 (16 B/parameter), bf16 compute "
                             "by autocast; bf16: all of them in bf16 (8 B/parameter), so the 5B model fits "
                             "one 80 GB GPU, at the cost of update precision")
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.set_defaults(warmup=3)  # the first steps allocate gradients and AdamW states
    return parser.parse_args(argv)


# ----- inputs -------------------------------------------------------------------------------------


def task_batch(task: Task, geo: perf.Geometry, model: UnityVideoTransformer, batch: int, device, seed: int):
    """Streams (x_t at each stream's t), velocity targets and per-stream loss weights (1 = noisy)."""
    text_dim = model.config.text_dim
    patterns = [task.clean[i % len(task.clean)] for i in range(batch)]
    g = torch.Generator().manual_seed(seed)
    streams, targets, weights = [], [], []
    for k, modality in enumerate(task.streams):
        clean = torch.tensor([p[k] for p in patterns])
        t = torch.where(clean, torch.zeros(batch), 0.05 + 0.9 * torch.rand(batch, generator=g))
        x0 = torch.randn(batch, *geo.latent, generator=g)
        noise = torch.randn(batch, *geo.latent, generator=g)
        x_t = (1 - t.view(-1, 1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1, 1) * noise
        context = torch.randn(batch, geo.context_len, text_dim, generator=g)
        streams.append(Stream(modality, x_t.to(device), t.to(device), context.to(device)))
        targets.append((noise - x0).to(device))
        weights.append((~clean).float().to(device))
    return streams, targets, weights


def wan_batch(geo: perf.Geometry, num_streams: int, text_dim: int, batch: int, device, seed: int):
    """A plain-Wan training batch with the same token count as `num_streams` streams."""
    g = torch.Generator().manual_seed(seed)
    channels, frames, height, width = geo.latent
    shape = (batch, channels, frames, height, num_streams * width)
    x_t, target = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    t = 0.05 + 0.9 * torch.rand(batch, generator=g)
    context = torch.randn(batch, geo.context_len, text_dim, generator=g)
    return x_t.to(device), (TIMESTEP_SCALE * t).to(device), context.to(device), target.to(device)


# ----- steps --------------------------------------------------------------------------------------


def loss_of(outputs, targets, weights) -> torch.Tensor:
    """Flow-matching MSE over the noisy streams only (a clean condition's output is not a prediction)."""
    total = 0.0
    for out, target, weight in zip(outputs, targets, weights):
        per_sample = (out.float() - target.float()).pow(2).flatten(1).mean(dim=1)
        total = total + (per_sample * weight).sum() / weight.sum().clamp_min(1.0)
    return total


def make_optimizer(params, lr: float, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """Fused AdamW where the device has it (one kernel for all parameters), else foreach."""
    params = [p for p in params if p.requires_grad]
    try:
        return torch.optim.AdamW(params, lr=lr, fused=True), "AdamW(fused)"
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(params, lr=lr, foreach=True), "AdamW(foreach)"


def autocast(device: torch.device, dtype: torch.dtype, fsdp: bool):
    """bf16 compute with fp32 master weights (autocast); FSDP2 casts through its MixedPrecisionPolicy."""
    if dtype == torch.float32 or fsdp:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def ours_step(call, streams, targets, weights, optimizer, device, dtype, fsdp):
    def step():
        with autocast(device, dtype, fsdp):
            outputs = call(streams)
        loss_of(outputs, targets, weights).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def wan_step(backbone, inputs, optimizer, device, dtype):
    x_t, timestep, context, target = inputs

    def step():
        with autocast(device, dtype, False):
            out = backbone(x_t, timestep, context, return_dict=False)[0]
        (out.float() - target).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


# ----- measuring one task -------------------------------------------------------------------------


def measure(step, args, device, peak_flops: float, flops: int, tokens: int) -> dict:
    """Time a step function and fill one result row."""
    with perf.PeakMemory(device) as memory:
        times = perf.time_calls(step, args.steps, args.warmup, device)
    seconds = perf.median(times)
    return dict(step_time_s=seconds, step_times_s=times, tokens=tokens, tokens_per_s=tokens / seconds,
                flops_per_step=flops, achieved_tflops=flops / seconds / 1e12, mfu=flops / seconds / peak_flops,
                peak_memory_mib=memory.peak_mib, memory_increase_mib=memory.increase_mib, memory_kind=memory.kind)


def counted_flops(step) -> int:
    """FLOPs of one step (forward + backward) counted by torch's FlopCounterMode. torch has no formula
    for the CPU attention kernels: they are counted like CUDA's."""
    def forward(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    def backward(grad, q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad, q, k, v)

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: forward,
               aten._scaled_dot_product_flash_attention_for_cpu_backward: backward}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        step()
    return counter.get_total_flops()


def task_flops(task: Task, geo: perf.Geometry, model, batch: int, isolation: bool) -> int:
    """3 x the analytic forward. Under isolation a shared clean pattern runs split attention (clean
    queries over clean keys only); a mixed batch runs the dense masked attention (all pairs)."""
    patterns = {task.clean[i % len(task.clean)] for i in range(batch)}
    shared = next(iter(patterns)) if len(patterns) == 1 else None
    clean = sum(shared) if isolation and shared is not None and not all(shared) else 0
    fwd = forward_flops(dict(model.config), geo.latent, len(task.streams), geo.context_len, batch,
                        clean_streams=clean)
    return 3 * fwd


def run_task(name, model, call, geo, args, device, dtype, peak_flops) -> dict:
    task = TASKS[name]
    streams, targets, weights = task_batch(task, geo, model, args.batch, device, args.seed)
    optimizer, optimizer_name = make_optimizer(model.parameters(), args.lr, device)
    step = ours_step(call, streams, targets, weights, optimizer, device, dtype, args.fsdp)
    tokens = args.batch * len(task.streams) * geo.tokens_per_stream
    flops = task_flops(task, geo, model, args.batch, args.isolation)
    with perf.config_override(model, shared_timestep=task.shared_timestep):
        row = dict(task=name, streams=len(task.streams), optimizer=optimizer_name,
                   **measure(step, args, device, peak_flops, flops, tokens))
        if args.check_flops:
            row["counted_flops"] = counted_flops(step)
    del optimizer
    return row


def prime(names, model, call, geo, args, device, dtype) -> None:
    """Untimed steps of the largest task before any timing: the first task would otherwise pay for the
    process's memory growth (on the CPU, fresh pages from the OS for every large buffer)."""
    name = max(names, key=lambda n: len(TASKS[n].streams))
    streams, targets, weights = task_batch(TASKS[name], geo, model, args.batch, device, args.seed)
    optimizer, _ = make_optimizer(model.parameters(), args.lr, device)
    step = ours_step(call, streams, targets, weights, optimizer, device, dtype, args.fsdp)
    perf.time_calls(step, 0, args.warmup, device)
    del optimizer


def run_wan(num_streams, model, geo, args, device, dtype, peak_flops) -> dict:
    inputs = wan_batch(geo, num_streams, model.config.text_dim, args.batch, device, args.seed)
    with perf.plain_wan(model.backbone) as backbone:
        optimizer, optimizer_name = make_optimizer(backbone.parameters(), args.lr, device)
        step = wan_step(backbone, inputs, optimizer, device, dtype)
        wide = (geo.latent[0], geo.latent[1], geo.latent[2], num_streams * geo.latent[3])
        flops = 3 * forward_flops(dict(model.config), wide, 1, geo.context_len, args.batch)
        tokens = args.batch * num_streams * geo.tokens_per_stream
        row = dict(task=f"wan ({num_streams}x tokens)", streams=1, same_tokens_as_streams=num_streams,
                   optimizer=optimizer_name,
                   **measure(step, args, device, peak_flops, flops, tokens))
        if args.check_flops:
            row["counted_flops"] = counted_flops(step)
    del optimizer
    return row


# ----- set-up -------------------------------------------------------------------------------------


def apply_checkpointing(model: UnityVideoTransformer, policy: str) -> None:
    if policy == "none":
        return
    every = 1 if policy == "full" else int(policy.removeprefix("every-"))
    model.enable_gradient_checkpointing()
    model.backbone.enable_gradient_checkpointing()  # the plain-Wan baseline's own block loop
    model.checkpoint_every = every


def wrap_fsdp(model: UnityVideoTransformer, dtype: torch.dtype):
    """FSDP2 through the trainer's own wrapping (one unit per attention / FFN); returns a call."""
    from unityvideo.training.parallel import RoutedModel, apply_fsdp

    wrapped = apply_fsdp(RoutedModel(model), dtype)

    def call(streams):
        outputs, zero = wrapped([streams])
        return [outputs[0][0] + zero, *outputs[0][1:]]
    return call


def main(argv=None) -> dict:
    args = parse_args(argv)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    if args.checkpointing not in ("none", "full") and not args.checkpointing.removeprefix("every-").isdigit():
        raise SystemExit(f"--checkpointing {args.checkpointing!r}: choose none, full or every-K")
    runtime = None
    if args.fsdp:  # join the process group first: each rank builds its model on its own GPU
        from unityvideo.training.parallel import init_runtime

        runtime = init_runtime()
    device = runtime.device if runtime else perf.resolve_device(args.device)
    clip, dtype = perf.parse_shape(args.shape), perf.resolve_dtype(args.dtype, device)

    torch.manual_seed(args.seed)
    model = perf.build_model(args.preset, device, args.layers, condition_isolation=args.isolation).train()
    if args.master_weights == "bf16":
        model.to(torch.bfloat16)
    geo = perf.geometry(args.preset, clip, model, num_streams=max(len(TASKS[n].streams) for n in names))
    apply_checkpointing(model, args.checkpointing)
    if args.compile:
        perf.compile_model(model)
    call = wrap_fsdp(model, dtype) if args.fsdp else model
    attention, attention_timings = perf.choose_attention(
        args.attention, model, device, dtype, args.batch, 2 * geo.tokens_per_stream)
    peak = perf.measure_matmul_peak(device, dtype)

    rows = []
    with perf.attention_context(attention, device):
        prime(names, model, call, geo, args, device, dtype)
        for name in names:
            rows.append(run_task(name, model, call, geo, args, device, dtype, peak))
        if not args.no_wan and not args.fsdp:
            for count in sorted({len(TASKS[n].streams) for n in names}):
                rows.append(run_wan(count, model, geo, args, device, dtype, peak))
    add_comparisons(rows)

    payload = dict(benchmark="train_step", environment=perf.environment(device, dtype, peak),
                   config=dict(vars(args), out=str(args.out) if args.out else None),
                   geometry=dict(preset=geo.preset, clip=geo.clip, latent_per_stream=geo.latent,
                                 tokens_per_stream=geo.tokens_per_stream, context_len=geo.context_len),
                   model=dict(parameters=sum(p.numel() for p in model.parameters()),
                              weights_mib=perf.parameter_bytes(model) / 2**20,
                              # gradients + AdamW's two moments (the weights' dtype), allocated in the first step
                              grads_and_adamw_estimate_mib=3 * perf.parameter_bytes(model) / 2**20),
                   attention=dict(kernel=attention, candidates_s=attention_timings), results=rows)
    if runtime is None or runtime.is_main:
        path = perf.write_results(args.out or perf.default_out("train_step", args, device), payload)
        print(render(payload, path))
    if runtime is not None:
        from unityvideo.training.parallel import shutdown

        shutdown(runtime)
    return payload


def add_comparisons(rows: list[dict]) -> None:
    """Overhead against plain Wan on the same token count, and the authors' t2v against ours."""
    wan = {r["same_tokens_as_streams"]: r for r in rows if "same_tokens_as_streams" in r}
    by_name = {r["task"]: r for r in rows}
    for row in rows:
        base = wan.get(row["streams"]) if "same_tokens_as_streams" not in row else None
        if base:
            row["overhead_vs_wan_pct"] = 100 * (row["step_time_s"] / base["step_time_s"] - 1)
    if "t2v" in by_name and "t2v-authors" in by_name:
        authors, ours = by_name["t2v-authors"], by_name["t2v"]
        authors["time_vs_ours_t2v"] = authors["step_time_s"] / ours["step_time_s"]


def render(payload: dict, path: Path) -> str:
    columns = [("task", "task", ""), ("tokens", "tokens", ","), ("step s", "step_time_s", ".4f"),
               ("tokens/s", "tokens_per_s", ",.0f"), ("FLOP/step", "flops_per_step", ".3e"),
               ("MFU", "mfu", ".1%"), ("peak MiB", "peak_memory_mib", ",.0f"),
               ("vs Wan", "overhead_vs_wan_pct", "+.1f"), ("counted FLOPs", "counted_flops", ".3e")]
    return perf.report("train_step", payload, f"batch {payload['config']['batch']}", columns, path)


if __name__ == "__main__":
    main()
