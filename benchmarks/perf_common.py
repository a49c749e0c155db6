"""Shared pieces of the speed benchmarks (train_step.py, generate.py).

Shapes and random inputs from a preset's codec geometry, the device's measured matmul peak (the
denominator of MFU), timing with warm-up and synchronisation, peak memory, the attention backend
choice, precision, compile and the results file. Nothing here downloads anything: weights, text
features and latents are random.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
from diffusers import WanTransformer3DModel
from diffusers.models.transformers.transformer_wan import WanAttnProcessor
from torch.nn.attention import SDPBackend, sdpa_kernel

from unityvideo.models import CODEC_GEOMETRY, PRESET_CODECS, UnityVideoTransformer
from unityvideo.pipeline import check_geometry

RESULTS = Path(__file__).resolve().parent / "results"
SHAPES = {"33x256x256": (33, 256, 256), "81x480x832": (81, 480, 832)}
# Text tokens per context: umT5 padded to 512 for the Wan presets (Wan's convention), MiniLM captions.
CONTEXT_LEN = {"wan2.1": 512, "wan2.2": 512, "pixel2": 64, "pixel4": 64}
SDPA_CANDIDATES = {"cuda": ("cudnn", "flash", "efficient"), "cpu": ("flash", "math")}
SDPA_BACKENDS = {"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                 "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


# ----- command line -------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="wan2.1-t2v-1.3b", help="a UnityVideoTransformer preset")
    parser.add_argument("--layers", type=int, default=None, help="override the preset's num_layers")
    parser.add_argument("--shape", default="33x256x256",
                        help=f"clip FRAMESxHEIGHTxWIDTH in pixels ({', '.join(SHAPES)} or any other)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="bf16 (default on CUDA) or fp32 (default on CPU)")
    parser.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the blocks")
    parser.add_argument("--attention", default="auto",
                        help="SDPA kernel: auto (time the candidates, keep the fastest), "
                             f"{', '.join(SDPA_BACKENDS)}, or diffusers:NAME (diffusers' attention dispatch, "
                             "e.g. diffusers:_native_cudnn, diffusers:flash)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check-flops", action="store_true",
                        help="also count one step's FLOPs with torch's FlopCounterMode (small sizes only)")
    parser.add_argument("--out", type=Path, default=None, help="results JSON (default: benchmarks/results/...)")


def parse_shape(text: str) -> tuple[int, int, int]:
    if text in SHAPES:
        return SHAPES[text]
    try:
        frames, height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--shape {text!r}: expected FRAMESxHEIGHTxWIDTH, e.g. 33x256x256") from None
    return frames, height, width


def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    return device


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    return DTYPES[name] if name else (torch.bfloat16 if device.type == "cuda" else torch.float32)


# ----- model and inputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Geometry:
    """One stream's latent shape and what it costs: (C, F, H, W), tokens, context length."""

    preset: str
    clip: tuple[int, int, int]
    latent: tuple[int, int, int, int]
    tokens_per_stream: int
    context_len: int


def geometry(preset: str, clip: tuple[int, int, int], model: UnityVideoTransformer, num_streams: int = 2) -> Geometry:
    """The latent of `clip` through the preset's codec, checked against the model's patching / RoPE."""
    codec = PRESET_CODECS[preset]
    cfg = model.config
    latent = check_geometry(CODEC_GEOMETRY[codec], cfg.patch_size, cfg.rope_max_seq_len, *clip, num_streams)
    tokens = latent[1] * latent[2] * latent[3] // (cfg.patch_size[0] * cfg.patch_size[1] * cfg.patch_size[2])
    return Geometry(preset, clip, tuple(latent), tokens, CONTEXT_LEN[codec])


def build_model(preset: str, device: torch.device, layers: int | None = None, **flags) -> UnityVideoTransformer:
    """Random weights, initialised on the device itself (a 5B model initialised on the CPU takes minutes)."""
    overrides = {"num_layers": layers} if layers else {}
    with torch.device(device):
        model = UnityVideoTransformer.from_preset(preset, **overrides, **flags)
    return model


@contextlib.contextmanager
def config_override(model: UnityVideoTransformer, **values) -> Iterator[None]:
    """Flip config switches that change no weights (shared_timestep, condition_isolation) for a while,
    so one set of weights serves the compared schemes."""
    before = {k: model.config[k] for k in values}
    model.register_to_config(**values)
    try:
        yield
    finally:
        model.register_to_config(**before)


@contextlib.contextmanager
def plain_wan(backbone: WanTransformer3DModel) -> Iterator[WanTransformer3DModel]:
    """The backbone with diffusers' own attention processors, for the plain-Wan baseline (UnityVideo
    installs a subclass on self-attention; it takes Wan's path when no route is given)."""
    saved = [block.attn1.processor for block in backbone.blocks]
    for block in backbone.blocks:
        processor = WanAttnProcessor()
        processor._attention_backend = saved[0]._attention_backend
        block.attn1.set_processor(processor)
    try:
        yield backbone
    finally:
        for block, processor in zip(backbone.blocks, saved):
            block.attn1.set_processor(processor)


def random_context(batch: int, length: int, dim: int, device, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(batch, length, dim, generator=g).to(device, dtype)


def random_latent(batch: int, latent: Sequence[int], device, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(batch, *latent, generator=g).to(device, dtype)


def wan_latent(batch: int, latent: Sequence[int], num_streams: int, device, dtype, seed: int) -> torch.Tensor:
    """One Wan latent as wide as `num_streams` streams side by side: the same number of tokens."""
    channels, frames, height, width = latent
    return random_latent(batch, (channels, frames, height, num_streams * width), device, dtype, seed)


def compile_model(model: UnityVideoTransformer) -> None:
    """Compile our per-block function and Wan's blocks (the plain-Wan baseline calls block.forward).
    Static shapes: each task's token count and attention route gets its own specialised graph."""
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    model.compile_blocks(dynamic=False)
    for block in model.backbone.blocks:
        block.compile(dynamic=False)


# ----- attention backend --------------------------------------------------------------------------


def choose_attention(spec: str, model: UnityVideoTransformer, device: torch.device, dtype: torch.dtype,
                     batch: int, seq_len: int) -> tuple[str, dict[str, float]]:
    """The attention kernel to run under: a diffusers backend name (set on the model), a fixed SDPA
    kernel, or (auto) the fastest SDPA kernel on this device for the self-attention shape."""
    if spec.startswith("diffusers:"):
        model.set_attention_backend(spec.split(":", 1)[1])
        return spec, {}
    if spec != "auto":
        if spec not in SDPA_BACKENDS:
            raise SystemExit(f"--attention {spec!r}: choose auto, {', '.join(SDPA_BACKENDS)} or diffusers:NAME")
        return spec, {}
    heads, head_dim = model.config.num_attention_heads, model.config.attention_head_dim
    timings = {}
    for name in SDPA_CANDIDATES.get(device.type, ("math",)):
        timings[name] = _time_sdpa(SDPA_BACKENDS[name], (batch, heads, seq_len, head_dim), device, dtype)
    usable = {k: v for k, v in timings.items() if v is not None}
    if not usable:
        return "default", timings
    return min(usable, key=usable.get), timings


def _time_sdpa(backend, shape, device, dtype, repeats: int = 3) -> float | None:
    """Median seconds of one forward + backward SDPA call under one kernel, None if it cannot run."""
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    try:
        with sdpa_kernel(backend):
            times = []
            for _ in range(repeats + 1):
                start = _now(device)
                torch.nn.functional.scaled_dot_product_attention(q, k, v).sum().backward()
                times.append(_now(device) - start)
        return statistics.median(times[1:])
    except RuntimeError:
        return None


def attention_context(name: str, device: torch.device):
    """Context that puts one SDPA kernel first (a no-op for diffusers backends and 'default'). The
    others stay as fallbacks, so a call the kernel cannot take (e.g. a masked cross-attention under
    flash) still runs."""
    if name not in SDPA_BACKENDS:
        return contextlib.nullcontext()
    rest = [SDPA_BACKENDS[n] for n in (*SDPA_CANDIDATES.get(device.type, ()), "math") if n != name]
    return sdpa_kernel([SDPA_BACKENDS[name], *dict.fromkeys(rest)], set_priority=True)


# ----- measuring ----------------------------------------------------------------------------------


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def time_calls(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of `repeats` calls after `warmup` untimed ones, synchronising the device around each."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = _now(device)
        fn()
        times.append(_now(device) - start)
    return times


def measure_matmul_peak(device: torch.device, dtype: torch.dtype, size: int | None = None,
                        seconds: float = 0.5) -> float:
    """The device's measured dense matmul throughput (FLOP/s) in `dtype`: the best of several timed
    square matmuls. The MFU denominator: what this device and dtype actually reach, not a datasheet."""
    size = size or (8192 if device.type == "cuda" else 1024)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    torch.matmul(a, b)  # warm-up (kernel selection, caches)
    best, spent = 0.0, 0.0
    while spent < seconds:
        calls = 10 if device.type == "cuda" else 2
        start = _now(device)
        for _ in range(calls):
            torch.matmul(a, b)
        elapsed = _now(device) - start
        spent += elapsed
        best = max(best, 2 * size**3 * calls / elapsed)
    return best


class PeakMemory:
    """Peak memory inside a `with` block. CUDA: torch.cuda.max_memory_allocated (absolute, MiB).
    CPU: resident set size sampled every 2 ms (absolute peak and increase over the start, MiB); a
    sampled figure that includes allocator slack, so read it as an upper-level estimate."""

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = self.increase_mib = None
        self.kind = "cuda max_memory_allocated" if device.type == "cuda" else "cpu peak RSS (sampled)"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        else:
            self._start = self._peak = _rss_bytes()
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mib = peak / 2**20
        self.increase_mib = (peak - self._start) / 2**20

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def parameter_bytes(module: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


# ----- reporting ----------------------------------------------------------------------------------


def environment(device: torch.device, dtype: torch.dtype, peak_flops: float) -> dict:
    import diffusers

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return dict(device=name, device_type=device.type, dtype=str(dtype).replace("torch.", ""),
                torch=torch.__version__, diffusers=diffusers.__version__, threads=torch.get_num_threads(),
                measured_peak_tflops=peak_flops / 1e12, python=platform.python_version())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"CPU: {line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"CPU: {platform.processor() or 'unknown'}"


def default_out(kind: str, args, device: torch.device) -> Path:
    layers = f"-{args.layers}layers" if args.layers else ""
    return RESULTS / f"{kind}-{args.preset}{layers}-{args.shape}-{device.type}.json"


def write_results(path: Path, payload: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def estimate_parser(doc: str, clips: int) -> argparse.ArgumentParser:
    """The arguments every estimation benchmark takes: a checkpoint, a world with a test split, a clip count."""
    from unityvideo.assets import DEFAULT_CHECKPOINT

    parser = argparse.ArgumentParser(description=doc.splitlines()[0], epilog=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="default: the shipped one")
    parser.add_argument("--data", type=Path, required=True, help="a world folder with a test split")
    parser.add_argument("--clips", type=int, default=clips)
    return parser


def run_benchmark(args: argparse.Namespace, measure: Callable[[argparse.Namespace], dict],
                  render: Callable[[dict], str]) -> dict:
    """The main() of a measuring script: measure, write the JSON to args.out, print the rendering."""
    result = measure(args)
    write_results(args.out, result)
    print(render(result))
    return result


def report(kind: str, payload: dict, setting: str, columns: list[tuple[str, str, str]], path: Path) -> str:
    """The printed summary of a benchmark run: where the JSON went, what was measured, the table."""
    env, geo = payload["environment"], payload["geometry"]
    head = (f"{kind}: {geo['preset']} {'x'.join(map(str, geo['clip']))}, latent {tuple(geo['latent_per_stream'])} "
            f"per stream, {setting}, {env['dtype']} on {env['device']} "
            f"(measured peak {env['measured_peak_tflops']:.2f} TFLOP/s), attention {payload['attention']['kernel']}")
    return "\n".join([f"results: {path}", head, table(payload["results"], columns)])


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A markdown table: columns are (header, key, format); missing values print as '-'."""
    lines = ["| " + " | ".join(h for h, _, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = [format(row[k], f) if row.get(k) is not None else "-" for _, k, f in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)
