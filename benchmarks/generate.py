"""Time a full N-step generation with UnityVideoPipeline per task, with batched CFG, beside baselines.

Random weights from a preset; a stand-in text encoder (random features of the preset's text_dim and
context length) and a stand-in codec (random latents of the preset's codec geometry), so the time is
the denoising loop itself (the transformer, the scheduler and the pipeline around them); latents are
returned undecoded. Per task: seconds per generation and per step, denoised tokens/s, peak memory,
model FLOPs (analytic, `forward_flops`, summed over the forwards the pipeline makes) and MFU.

Rows:
- t2v, joint, control, estimate: the pipeline as it ships (text CFG, passes batched in one forward);
- control-isolated / estimate-isolated: the same weights with condition_isolation=True (clean
  conditions attend only to clean streams: split attention) and control-cached / estimate-cached with
  the condition cache on top (`cache_condition=True`: the conditions' keys and values once, every
  step runs the target stream only); `max_abs_diff` is the cached result against the isolated one;
- t2v-authors: the authors' scheme, both streams always present with one shared timestep;
- wan: diffusers' WanTransformer3DModel (the same backbone weights, Wan's own attention processor)
  in the same Euler loop with batched CFG, on t2v's token count: the per-token overhead of ours.

    python benchmarks/generate.py --preset wan2.2-ti2v-5b --shape 33x256x256 --steps 50
    python benchmarks/generate.py --preset tiny --shape 8x32x32 --steps 4      # CPU smoke run
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as perf  # noqa: E402

from unityvideo.models import CODEC_GEOMETRY, PRESET_CODECS, LatentCodec, forward_flops  # noqa: E402
from unityvideo.models.weights import keep_fp32  # noqa: E402
from unityvideo.pipeline import UnityVideoPipeline, make_scheduler  # noqa: E402

PROMPT, NEGATIVE = "a benchmark clip", ""
# task -> (pipeline task, streams, conditions, shared_timestep, isolation, cache)
TASKS = {
    "t2v": ("t2v", 1, 0, False, False, False),
    "joint": ("joint", 2, 0, False, False, False),
    "control": ("control", 2, 1, False, False, False),
    "estimate": ("estimate", 2, 1, False, False, False),
    "control-isolated": ("control", 2, 1, False, True, False),
    "control-cached": ("control", 2, 1, False, True, True),
    "estimate-isolated": ("estimate", 2, 1, False, True, False),
    "estimate-cached": ("estimate", 2, 1, False, True, True),
    "t2v-authors": ("joint", 2, 0, True, False, False),
    "wan": ("wan", 1, 0, False, False, False),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    perf.add_common_args(parser)
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from {', '.join(TASKS)}")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps per generation")
    parser.add_argument("--repeats", type=int, default=1, help="timed generations per task (median)")
    parser.add_argument("--guidance", type=float, default=5.0, help="text CFG scale (1 = no CFG)")
    parser.add_argument("--shift", type=float, default=5.0, help="timestep shift of the Euler scheduler")
    parser.set_defaults(warmup=1)
    return parser.parse_args(argv)


# ----- stand-ins for the text encoder and the codec -------------------------------------------------


class RandomText:
    """Text-encoder stand-in: fixed random features per text (seeded by its hash), every token real."""

    name = "random"
    convention = "masked"

    def __init__(self, dim: int, length: int):
        self.dim, self.length = dim, length

    def encode(self, texts):
        features = torch.stack([self._features(t) for t in texts])
        return features, torch.ones(features.shape[:2], dtype=torch.bool)

    def model_inputs(self, texts, length=None, convention=None):
        return self.encode(texts)

    def _features(self, text: str) -> torch.Tensor:
        seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
        return torch.randn(self.length, self.dim, generator=torch.Generator().manual_seed(seed))

    def to(self, device):
        return self


class RandomLatentCodec(LatentCodec):
    """Codec stand-in with a real codec's geometry: encode gives a fixed random latent of the right shape."""

    def __init__(self, codec: str):
        super().__init__()
        self.geometry = CODEC_GEOMETRY[codec]

    def _encode(self, video: torch.Tensor) -> torch.Tensor:
        shape = self.geometry.latent_shape(*video.shape[2:])
        g = torch.Generator().manual_seed(0)
        return torch.randn(video.shape[0], *shape, generator=g).to(video.device, video.dtype)

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("the benchmark returns latents")


# ----- one generation -----------------------------------------------------------------------------


def request(name: str, clip, guidance: float, steps: int, seed: int) -> dict:
    """Pipeline arguments of a task (a uint8 condition video for control / estimate)."""
    task, *_ = TASKS[name]
    frames, height, width = clip
    video = np.random.default_rng(seed).integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
    args = dict(prompt=PROMPT, negative_prompt=NEGATIVE, task=task, num_frames=frames, height=height, width=width,
                num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                generator=torch.Generator().manual_seed(seed), cache_condition=TASKS[name][5])
    if task == "joint":
        args["modalities"] = ["depth"]
    if task == "control":
        args["conditions"] = {"depth": video}
    if task == "estimate":
        args.update(video=video, modalities=["depth"])
    return args


@torch.inference_mode()
def wan_generate(pipe: UnityVideoPipeline, clip, guidance: float, steps: int, seed: int) -> torch.Tensor:
    """The plain-Wan loop: the backbone on one RGB latent, batched CFG, the pipeline's scheduler."""
    backbone, device, dtype = pipe.transformer.backbone, pipe.device, pipe.dtype
    shape = pipe.codec.geometry.latent_shape(*clip)
    x = torch.randn(1, *shape, generator=torch.Generator().manual_seed(seed)).to(device)
    features, _ = pipe.text_encoder.encode([PROMPT, NEGATIVE] if guidance != 1.0 else [PROMPT])
    context = features.to(device, dtype)
    scheduler = make_scheduler("euler", pipe.scheduler.config.shift)
    scheduler.set_timesteps(steps, device=device)
    for i, t in enumerate(scheduler.timesteps):
        sigma = float(scheduler.sigmas[i])
        batch = context.shape[0]
        timestep = torch.full((batch,), 1000.0 * sigma, device=device)
        v = backbone(x.to(dtype).expand(batch, -1, -1, -1, -1), timestep, context, return_dict=False)[0].float()
        if guidance != 1.0:
            cond, uncond = v.chunk(2)
            v = uncond + guidance * (cond - uncond)
        x = scheduler.step(v, t, x, return_dict=False)[0]
    return x


def generation_flops(name: str, pipe: UnityVideoPipeline, latent, context_len: int, guidance: float, steps: int) -> int:
    """Analytic FLOPs of one generation, mirroring the pipeline's forwards: one batched forward per
    step over the CFG passes, and with the cache its one-time build per distinct condition context."""
    task, streams, conditions, _, isolation, cached = TASKS[name]
    cfg = dict(pipe.transformer.config)
    passes = 2 if guidance != 1.0 else 1
    clean = conditions if isolation else 0
    per_step = forward_flops(cfg, latent, streams, context_len, batch=passes, clean_streams=clean, cached=cached)
    total = steps * per_step
    if cached:
        # estimate's RGB condition sees the caption in one pass and the negative prompt in the other
        builds = passes if task == "estimate" and PROMPT != NEGATIVE else 1
        dim = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        tokens = latent[1] * latent[2] * latent[3] // int(np.prod(cfg["patch_size"]))
        head = 2 * conditions * tokens * dim * pipe.transformer.backbone.proj_out.out_features  # not run by a build
        total += builds * (forward_flops(cfg, latent, conditions, context_len, batch=1) - head)
    return total


def counted_flops(fn) -> int:
    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    aten = torch.ops.aten  # torch has no formula for the CPU attention kernels: count them like CUDA's
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops()


def cache_bytes(pipe: UnityVideoPipeline, fn) -> int:
    """Bytes of the condition caches a generation builds (measured from the cached tensors)."""
    model, built = pipe.transformer, []
    original = model.cache_conditions

    def recording(layout):
        cache = original(layout)
        built.append(sum(t.numel() * t.element_size() for t in (*cache.keys, *cache.values)))
        return cache

    model.cache_conditions = recording
    try:
        fn()
    finally:
        del model.cache_conditions
    return sum(built)


def generation(name: str, pipe: UnityVideoPipeline, clip, args, steps: int):
    """A callable that runs one generation of `steps` steps and returns its latents."""
    if TASKS[name][0] == "wan":
        return lambda: wan_generate(pipe, clip, args.guidance, steps, args.seed)
    return lambda: pipe(**request(name, clip, args.guidance, steps, args.seed)).latents


def run_task(name, pipe, geo, args, device, peak_flops, reference: dict) -> dict:
    task, streams, conditions, shared, isolation, cached = TASKS[name]
    generate = generation(name, pipe, geo.clip, args, args.steps)
    warm = generation(name, pipe, geo.clip, args, min(args.steps, 2))  # compiles, allocates

    with perf.config_override(pipe.transformer, shared_timestep=shared, condition_isolation=isolation), \
            torch.inference_mode():
        for _ in range(args.warmup):
            warm()
        with perf.PeakMemory(device) as memory:
            times, outputs = [], None
            for _ in range(args.repeats):
                start = perf._now(device)
                outputs = generate()
                times.append(perf._now(device) - start)
        row = dict(task=name, streams=streams)
        if cached:  # one more 1-step generation, to weigh the caches it builds
            row["cache_mib"] = cache_bytes(pipe, generation(name, pipe, geo.clip, args, 1)) / 2**20
        if args.check_flops:
            row["counted_flops"] = counted_flops(generate)

    seconds = perf.median(times)
    flops = generation_flops(name, pipe, geo.latent, geo.context_len, args.guidance, args.steps)
    targets = streams - conditions
    row.update(generation_s=seconds, generation_times_s=times, step_s=seconds / args.steps,
               denoised_tokens_per_s=targets * geo.tokens_per_stream * args.steps / seconds,
               flops_per_generation=flops, achieved_tflops=flops / seconds / 1e12,
               mfu=flops / seconds / peak_flops, peak_memory_mib=memory.peak_mib,
               memory_increase_mib=memory.increase_mib, memory_kind=memory.kind)
    _compare_outputs(name, outputs, row, reference)
    return row


def _compare_outputs(name: str, outputs, row: dict, reference: dict) -> None:
    """Keep the isolated runs' latents; a cached run reports its largest difference from them."""
    if not isinstance(outputs, dict):
        return
    if name.endswith("-isolated"):
        reference[name.removesuffix("-isolated")] = {k: v.float().cpu() for k, v in outputs.items()}
    elif name.endswith("-cached") and name.removesuffix("-cached") in reference:
        ref = reference[name.removesuffix("-cached")]
        row["max_abs_diff_vs_isolated"] = max((outputs[k].float().cpu() - ref[k]).abs().max().item() for k in ref)


# ----- set-up -------------------------------------------------------------------------------------


def build_pipeline(args, device, dtype) -> UnityVideoPipeline:
    model = perf.build_model(args.preset, device, args.layers).eval().requires_grad_(False)
    if dtype != torch.float32:
        model.to(dtype)
        keep_fp32(model)  # as loading with torch_dtype does: timestep embedder, norms, tables in fp32
    if args.compile:
        perf.compile_model(model)
    codec = PRESET_CODECS[args.preset]
    text = RandomText(model.config.text_dim, perf.CONTEXT_LEN[codec])
    pipe = UnityVideoPipeline(model, text, RandomLatentCodec(codec), make_scheduler("euler", args.shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(argv=None) -> dict:
    args = parse_args(argv)
    device, clip = perf.resolve_device(args.device), perf.parse_shape(args.shape)
    dtype = perf.resolve_dtype(args.dtype, device)
    names = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown:
        raise SystemExit(f"--tasks: unknown {unknown}; choose from {', '.join(TASKS)}")
    if args.batch != 1:
        raise SystemExit("--batch: the generation benchmark times one video per generation (batch 1)")
    names.sort(key=lambda n: n.endswith("-cached"))  # isolated runs first: the cached ones compare to them

    torch.manual_seed(args.seed)
    pipe = build_pipeline(args, device, dtype)
    geo = perf.geometry(args.preset, clip, pipe.transformer, num_streams=max(TASKS[n][1] for n in names))
    passes = 2 if args.guidance != 1.0 else 1
    attention, attention_timings = perf.choose_attention(
        args.attention, pipe.transformer, device, dtype, passes, 2 * geo.tokens_per_stream)
    peak = perf.measure_matmul_peak(device, dtype)

    rows, reference = [], {}
    with perf.attention_context(attention, device):
        for name in names:
            rows.append(run_task(name, pipe, geo, args, device, peak, reference))
    add_comparisons(rows)

    model = pipe.transformer
    payload = dict(benchmark="generate", environment=perf.environment(device, dtype, peak),
                   config=dict(vars(args), out=str(args.out) if args.out else None),
                   geometry=dict(preset=geo.preset, clip=geo.clip, latent_per_stream=geo.latent,
                                 tokens_per_stream=geo.tokens_per_stream, context_len=geo.context_len),
                   model=dict(parameters=sum(p.numel() for p in model.parameters()),
                              weights_mib=perf.parameter_bytes(model) / 2**20,
                              cache_estimate_mib=cache_estimate(model, geo, dtype) / 2**20),
                   attention=dict(kernel=attention, candidates_s=attention_timings), results=rows)
    path = perf.write_results(args.out or perf.default_out("generate", args, device), payload)
    print(render(payload, path))
    return payload


def cache_estimate(model, geo: perf.Geometry, dtype: torch.dtype) -> int:
    """Bytes of one condition stream's cache: keys and values, every layer, batch 1."""
    dim = model.config.num_attention_heads * model.config.attention_head_dim
    return 2 * model.config.num_layers * geo.tokens_per_stream * dim * torch.finfo(dtype).bits // 8


def add_comparisons(rows: list[dict]) -> None:
    by_name = {r["task"]: r for r in rows}
    ours = by_name.get("t2v")
    if ours and "wan" in by_name:
        ours["overhead_vs_wan_pct"] = 100 * (ours["generation_s"] / by_name["wan"]["generation_s"] - 1)
    if ours and "t2v-authors" in by_name:
        by_name["t2v-authors"]["time_vs_ours_t2v"] = by_name["t2v-authors"]["generation_s"] / ours["generation_s"]
    for task in ("control", "estimate"):
        cached, isolated = by_name.get(f"{task}-cached"), by_name.get(f"{task}-isolated")
        if cached and isolated:
            cached["speedup_vs_isolated"] = isolated["generation_s"] / cached["generation_s"]


def render(payload: dict, path: Path) -> str:
    cfg = payload["config"]
    columns = [("task", "task", ""), ("s/generation", "generation_s", ".3f"), ("s/step", "step_s", ".4f"),
               ("denoised tokens/s", "denoised_tokens_per_s", ",.0f"), ("FLOP", "flops_per_generation", ".3e"),
               ("MFU", "mfu", ".1%"), ("peak MiB", "peak_memory_mib", ",.0f"),
               ("vs Wan %", "overhead_vs_wan_pct", "+.1f"), ("speed-up", "speedup_vs_isolated", ".2f"),
               ("max diff", "max_abs_diff_vs_isolated", ".1e"), ("counted FLOPs", "counted_flops", ".3e")]
    return perf.report("generate", payload, f"{cfg['steps']} steps, CFG {cfg['guidance']}", columns, path)


if __name__ == "__main__":
    main()
