#!/usr/bin/env bash
# UnityVideo GPU benchmark: the figures only a GPU gives, in one run kept under BUDGET seconds (450).
# Prepared for one H200-class GPU with python, torch (CUDA), transformers, safetensors, scipy; diffusers
# is installed from WHEELS when the machine lacks it (nothing is downloaded).
#
# Run from the repository root:
#     WHEELS=<folder with a diffusers wheel> bash benchmarks/gpu_check.sh
# CPU rehearsal at tiny size (tests/test_benchmarks.py runs it):
#     DEVICE=cpu SIZE=tiny COMPILE=0 OUT=/tmp/x bash benchmarks/gpu_check.sh
#
# Stages, each under `timeout` and skipped when the budget is spent: install (only wheels whose
# package is missing) -> smoke (tiny model fwd/bwd in bf16 vs fp32, finite grads, which SDPA kernel
# self- and cross-attention use, masked vs unmasked cross-attention time) -> train 1.3B two-stream
# 33x256x256 (t2v, joint, plain Wan 1x/2x) -> train 5B two-stream (joint; no Wan row: with every-K
# checkpointing the plain-Wan baseline checkpoints every block, so its row would be unfair) -> 5B 50-step
# CFG generation (t2v, control, wan) -> if time is left: compile smoke, compiled 1.3B train, compiled
# 5B generation. Files under $OUT: gpu_check.log (every stage's output), summary.json (environment,
# smoke, every benchmark's JSON), table.md. MFU is given against the measured bf16 matmul peak and
# against 790 and 989 TFLOP/s.
# Exit status: 0 every stage that ran passed; 1 install or smoke failed (timing skipped); 2 a timing
# stage failed or timed out (the others still ran).
set -u
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=${REPO:-$PWD}
WHEELS=${WHEELS:-$HERE/wheels}  # default: benchmarks/wheels (absent: install nothing)
OUT=${OUT:-$REPO/gpu_check_out}
WORK=${WORK:-${TMPDIR:-/tmp}/uv_gpu_check}
DEVICE=${DEVICE:-cuda}
SIZE=${SIZE:-real}
BUDGET=${BUDGET:-450}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK/site" "$WORK/json"
LOG=$OUT/gpu_check.log
: > "$LOG"
START=$(date +%s)
STATUS=0
export PYTHONUNBUFFERED=1 PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
export PYTHONPATH="$WORK/site:$REPO/src${PYTHONPATH:+:$PYTHONPATH}"
[ -d "$REPO/src/unityvideo" ] && [ -f "$REPO/benchmarks/train_step.py" ] || { echo "run from the repository root (REPO=$REPO)"; exit 1; }

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
say() { echo "$*" | tee -a "$LOG"; }
# stage NAME LIMIT_S CMD...: run under timeout (capped by what is left), log, record rc
stage() {
  local name=$1 limit=$2; shift 2
  local l; l=$(left)
  if [ "$l" -lt 25 ]; then say "== $name: skipped (budget spent)"; echo "$name skipped" >> "$WORK/stages"; return 3; fi
  [ "$limit" -gt $((l - 5)) ] && limit=$((l - 5))
  say "== $name (limit ${limit}s, $(left)s left): $(echo "$*" | head -c 300 | tr "\n" " ")"
  local t0; t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" >> "$LOG" 2>&1
  local rc=$?
  say "== $name: rc=$rc in $(( $(date +%s) - t0 ))s"
  echo "$name $rc $(( $(date +%s) - t0 ))" >> "$WORK/stages"
  return $rc
}
: > "$WORK/stages"

# ----- sizes ---------------------------------------------------------------------------------------
if [ "$SIZE" = tiny ]; then
  P13=tiny; P5=tiny; SHAPE=8x32x32; B13=2; B5=2; NSTEPS=2; GSTEPS=3; SMOKE_W=tiny
else
  P13=wan2.1-t2v-1.3b; P5=wan2.2-ti2v-5b; SHAPE=33x256x256; B13=4; B5=8; NSTEPS=5; GSTEPS=50; SMOKE_W=real
fi
DEV="--device $DEVICE"

# ----- 0. environment and install ----------------------------------------------------------------
{
  echo "== environment"; date -u; uname -a
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv
  $PY -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} >> "$LOG" 2>&1

install_missing() {
  local whl name mod
  for whl in "$WHEELS"/*.whl "$WHEELS"/optional/*.whl; do
    [ -f "$whl" ] || continue
    name=$(basename "$whl" | cut -d- -f1)
    case $name in pillow) mod=PIL;; *) mod=$name;; esac
    if $PY -c "import $mod" 2>/dev/null; then echo "have $mod ($($PY -c "import $mod; print(getattr($mod, '__version__', '?'))"))"; continue; fi
    echo "installing $(basename "$whl") -> $WORK/site"
    $PY -m pip install --no-index --no-deps --no-compile --quiet --target "$WORK/site" "$whl" \
      || $PY -c "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])" "$whl" "$WORK/site"
  done
  # what the benchmarks import (PyAV is not among them; unityvideo.modalities imports scipy)
  $PY -c "
import diffusers, PIL, scipy, numpy, safetensors, huggingface_hub, transformers, yaml, tqdm, torch
from diffusers import WanTransformer3DModel
import unityvideo.pipeline, unityvideo.models
print('imports ok: diffusers', diffusers.__version__, 'hub', huggingface_hub.__version__, 'numpy', numpy.__version__,
      'scipy', scipy.__version__, 'torch', torch.__version__)"
}
stage install 60 bash -c "$(declare -f install_missing); PY='$PY' WHEELS='$WHEELS' WORK='$WORK' install_missing" || { STATUS=1; }

# ----- 1. smoke ------------------------------------------------------------------------------------
cat > "$WORK/smoke.py" <<'PYEOF'
import json, os, sys, time
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile
from unityvideo.models import Stream, UnityVideoTransformer

device = torch.device(sys.argv[1]); size = sys.argv[2]; out = sys.argv[3]
cuda = device.type == "cuda"
res = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}
torch.manual_seed(0)

# (a) tiny model: bf16 autocast vs fp32, backward, finite grads, masked contexts
m = UnityVideoTransformer.from_preset("tiny", num_layers=2).to(device).train()
def streams(mask):
    g = torch.Generator().manual_seed(1)
    ss = []
    for k in ("rgb", "depth"):
        ctx = torch.randn(2, 16, 384, generator=g)
        msk = torch.ones(2, 16, dtype=torch.bool)
        msk[1, 10:] = False
        ss.append(Stream(k, torch.randn(2, 48, 4, 8, 8, generator=g).to(device), torch.tensor([0.3, 0.0]).to(device),
                         ctx.to(device), msk.to(device) if mask else None))
    return ss
for mask in (False, True):
    with torch.no_grad():
        ref = m(streams(mask))
    with torch.autocast(device.type, dtype=torch.bfloat16):
        outs = m(streams(mask))
    rel = max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(outs, ref))
    sum(o.float().pow(2).mean() for o in outs).backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    finite = all(bool(torch.isfinite(g).all()) for g in grads)
    m.zero_grad(set_to_none=True)
    res[f"tiny_bf16_vs_fp32_rel_err_mask_{mask}"] = rel
    res[f"tiny_grads_finite_mask_{mask}"] = finite
    res[f"tiny_params_with_grad_mask_{mask}"] = len(grads)
ok = all(res[f"tiny_grads_finite_mask_{k}"] and res[f"tiny_bf16_vs_fp32_rel_err_mask_{k}"] < 0.05 for k in (False, True))
res["tiny_ok"] = ok

# (b) which SDPA kernel the model's self- and cross-attention take (aten op names), no mask vs mask,
#     at the 1.3B width (1 layer) and the real token count, bf16 autocast
SDPA_OPS = ("_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
            "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_attention_math",
            "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable")
if size == "real":
    wide = UnityVideoTransformer.from_preset("wan2.1-t2v-1.3b", num_layers=1).to(device).train()
    lat, ctx_len, text_dim = (16, 9, 32, 32), 512, 4096
else:
    wide = UnityVideoTransformer.from_preset("tiny", num_layers=1).to(device).train()
    lat, ctx_len, text_dim = (48, 4, 8, 8), 64, 384
def wide_streams(mask):
    ss = []
    for k in ("rgb", "depth"):
        msk = torch.zeros(1, ctx_len, dtype=torch.bool, device=device); msk[:, :8] = True  # a short prompt
        ss.append(Stream(k, torch.randn(1, *lat, device=device), torch.rand(1, device=device),
                         torch.randn(1, ctx_len, text_dim, device=device), msk if mask else None))
    return ss
kernels = {}
for mask in (False, True):
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof, torch.autocast(device.type, dtype=torch.bfloat16):
        outs = wide(wide_streams(mask))
        sum(o.float().pow(2).mean() for o in outs).backward()
    names = {}
    for e in prof.key_averages():
        if any(op in e.key for op in SDPA_OPS) or "flash" in e.key.lower() or "fmha" in e.key.lower() or "cudnn" in e.key.lower() and "attention" in e.key.lower():
            names[e.key[:90]] = e.count
    kernels[f"mask_{mask}"] = names
    wide.zero_grad(set_to_none=True)
res["sdpa_ops_1layer_fwd_bwd"] = kernels

# (c) cross-attention cost with a (B,1,1,L) bool mask vs none, and self-attention by backend
def bench(fn, n=10):
    fn()
    if cuda: torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(n): fn()
    if cuda: torch.cuda.synchronize()
    return (time.perf_counter() - t) / n
from torch.nn.attention import SDPBackend, sdpa_kernel
dt = torch.bfloat16
shapes = {"1.3B cross": ((8, 12, 2304, 128), 512), "5B cross": ((16, 24, 576, 128), 512)} if size == "real" else \
         {"tiny cross": ((4, 4, 128, 32), 64)}
cross = {}
for name, (qs, L) in shapes.items():
    q = torch.randn(qs, device=device, dtype=dt, requires_grad=True)
    k = torch.randn(qs[0], qs[1], L, qs[3], device=device, dtype=dt, requires_grad=True)
    v = torch.randn_like(k, requires_grad=True)
    mask = torch.ones(qs[0], 1, 1, L, dtype=torch.bool, device=device); mask[:, :, :, 8:] = False
    row = {}
    for label, mk in (("no_mask", None), ("bool_mask", mask)):
        try:
            row[label + "_fwd_bwd_ms"] = 1e3 * bench(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mk).sum().backward())
        except RuntimeError as e:
            row[label] = f"error: {e}"[:200]
    try:  # trimmed: the 8 real tokens only, no mask
        k8, v8 = k[:, :, :8].detach().requires_grad_(), v[:, :, :8].detach().requires_grad_()
        row["trimmed_to_8_fwd_bwd_ms"] = 1e3 * bench(lambda: F.scaled_dot_product_attention(q, k8, v8).sum().backward())
    except RuntimeError as e:
        row["trimmed"] = f"error: {e}"[:200]
    cross[name] = row
res["cross_attention_ms"] = cross
if cuda:
    selfs = {}
    for name, qs in ({"1.3B self": (4, 12, 4608, 128), "5B self": (8, 24, 1152, 128)} if size == "real" else {"tiny self": (2, 4, 256, 32)}).items():
        q, k, v = (torch.randn(qs, device=device, dtype=dt, requires_grad=True) for _ in range(3))
        row = {}
        for b in ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION"):
            try:
                with sdpa_kernel(getattr(SDPBackend, b)):
                    s = bench(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
                fl = 3.5 * 4 * qs[0] * qs[1] * qs[2] ** 2 * qs[3]  # fwd 4BHN^2d, bwd 2.5x
                row[b] = {"ms": 1e3 * s, "tflops": fl / s / 1e12}
            except RuntimeError as e:
                row[b] = f"error: {e}"[:160]
        selfs[name] = row
    res["self_attention_fwd_bwd"] = selfs
json.dump(res, open(out, "w"), indent=1)
print(json.dumps(res, indent=1))
sys.exit(0 if ok else 1)
PYEOF
stage smoke 100 $PY "$WORK/smoke.py" "$DEVICE" "$SMOKE_W" "$WORK/json/smoke.json" || STATUS=1

# ----- 2-4. timing (eager first) ---------------------------------------------------------------------
if [ $STATUS -eq 0 ]; then
  stage train_1.3b 110 $PY "$REPO/benchmarks/train_step.py" --preset $P13 --shape $SHAPE --batch $B13 \
      --dtype bf16 --tasks t2v,joint --steps $NSTEPS --warmup 2 $DEV --out "$WORK/json/train_1.3b.json" || STATUS=2
  stage train_5b 110 $PY "$REPO/benchmarks/train_step.py" --preset $P5 --shape $SHAPE --batch $B5 \
      --dtype bf16 --master-weights bf16 --checkpointing every-2 --tasks joint --no-wan --steps $NSTEPS --warmup 2 $DEV \
      --out "$WORK/json/train_5b.json" || STATUS=2
  stage generate_5b 100 $PY "$REPO/benchmarks/generate.py" --preset $P5 --shape $SHAPE --steps $GSTEPS \
      --tasks t2v,control,wan --warmup 1 $DEV --out "$WORK/json/generate_5b.json" || STATUS=2
  # ----- 5. compiled, with what is left ------------------------------------------------------------
  cat > "$WORK/compile_smoke.py" <<'PYEOF'
import sys, time, torch
from unityvideo.models import Stream, UnityVideoTransformer
device = torch.device(sys.argv[1])
m = UnityVideoTransformer.from_preset("tiny", num_layers=2).to(device).train()
st = [Stream(k, torch.randn(2, 48, 4, 8, 8, device=device), torch.rand(2, device=device), torch.randn(2, 16, 384, device=device)) for k in ("rgb", "depth")]
with torch.autocast(device.type, dtype=torch.bfloat16):
    ref = m(st)
m.compile_blocks(dynamic=False)
t = time.time()
with torch.autocast(device.type, dtype=torch.bfloat16):
    out = m(st)
sum(o.float().pow(2).mean() for o in out).backward()
err = max(((a.float() - b.float()).norm() / b.float().norm()).item() for a, b in zip(out, ref))
print(f"compile smoke: first fwd+bwd {time.time() - t:.1f}s, rel diff vs eager {err:.2e}")
sys.exit(0 if err < 0.05 else 1)
PYEOF
  if [ "${COMPILE:-1}" = 1 ] && [ "$(left)" -gt 120 ] && stage compile_smoke 90 $PY "$WORK/compile_smoke.py" "$DEVICE"; then
    stage train_1.3b_compiled 200 $PY "$REPO/benchmarks/train_step.py" --preset $P13 --shape $SHAPE --batch $B13 \
        --dtype bf16 --tasks joint --no-wan --compile --steps $NSTEPS --warmup 3 $DEV --out "$WORK/json/train_1.3b_compiled.json" || STATUS=2
    stage generate_5b_compiled 200 $PY "$REPO/benchmarks/generate.py" --preset $P5 --shape $SHAPE --steps $GSTEPS \
        --tasks t2v,control --compile --warmup 1 $DEV --out "$WORK/json/generate_5b_compiled.json" || STATUS=2
  fi
fi

# ----- summary ---------------------------------------------------------------------------------------
cat > "$WORK/summarize.py" <<'PYEOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
DATASHEET, LEASE = 989e12, 790e12  # H100/H200 dense bf16 datasheet; this workplace's measured 8192^3 rate
summary = {"stages": [l.split() for l in (work / "stages").read_text().splitlines()]}
lines = ["| run | task | tokens | s/step or s/gen | model TFLOP | MFU (measured peak) | MFU vs 790 | MFU vs 989 | peak GiB | vs Wan | attention |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for f in sorted((work / "json").glob("*.json")):
    data = json.loads(f.read_text())
    summary[f.stem] = data
    if "results" not in data:
        continue
    peak = data["environment"]["measured_peak_tflops"]
    for r in data["results"]:
        t = r.get("step_time_s", r.get("generation_s"))
        flops = r.get("flops_per_step", r.get("flops_per_generation"))
        vs = r.get("overhead_vs_wan_pct")
        lines.append(f"| {f.stem} | {r['task']} | {r.get('tokens', '-')} | {t:.4f} | {flops / 1e12:.1f} | {r['mfu']:.1%} | "
                     f"{flops / t / LEASE:.1%} | {flops / t / DATASHEET:.1%} | {r['peak_memory_mib'] / 1024:.1f} | "
                     f"{'-' if vs is None else f'{vs:+.1f}%'} | {data['attention']['kernel']} |")
    lines.append(f"| {f.stem} | (measured matmul peak {peak:.0f} TFLOP/s, {data['environment']['device']}) | | | | | | | | | |")
(out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
(out / "table.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
print("stages:", " ".join(f"{s[0]}={s[1]}" for s in summary["stages"] if len(s) > 1))
PYEOF
$PY "$WORK/summarize.py" "$WORK" "$OUT" 2>&1 | tee -a "$LOG"
say "gpu_check: status $STATUS after $(( $(date +%s) - START ))s"
exit $STATUS
