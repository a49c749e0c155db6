"""Check the analytic FLOPs (`forward_flops`) against torch's FlopCounterMode at the real model sizes.

The models are built on the meta device and run forward there: shapes flow through every layer and
FlopCounterMode counts each matmul, convolution and attention product, but nothing is allocated or
computed, so the 1.3B / 5B / 14B presets at 33x256x256 and 81x480x832 take about a second each on a
CPU. Rows: our t2v (one stream), two streams (joint / control / estimate without isolation) and plain
Wan on one latent as wide as two streams.

    python benchmarks/flop_check.py [--presets wan2.1-t2v-1.3b,wan2.2-ti2v-5b] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

sys.path.insert(0, str(Path(__file__).resolve().parent))
import perf_common as perf  # noqa: E402

from unityvideo.models import Stream, UnityVideoTransformer, forward_flops  # noqa: E402


def counted(fn) -> int:
    def sdpa(q, k, v, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(q, k, v)

    aten = torch.ops.aten
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: sdpa, aten._scaled_dot_product_attention_math: sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def check(preset: str, shape: str) -> list[dict]:
    """Analytic vs counted FLOPs of one forward (batch 1) for each layout, on the meta device."""
    with torch.device("meta"):
        model = UnityVideoTransformer.from_preset(preset)
        geo = perf.geometry(preset, perf.parse_shape(shape), model, num_streams=2)
        cfg, text_dim = dict(model.config), model.config.text_dim
        streams = [Stream(m, torch.randn(1, *geo.latent), torch.rand(1), torch.randn(1, geo.context_len, text_dim))
                   for m in ("rgb", "depth")]
        wide = (*geo.latent[:3], 2 * geo.latent[3])
        wan_inputs = (torch.randn(1, *wide), torch.rand(1) * 1000, torch.randn(1, geo.context_len, text_dim))
    rows = []
    for layout, fn, expected in (
        ("t2v (1 stream)", lambda: model(streams[:1]), forward_flops(cfg, geo.latent, 1, geo.context_len)),
        ("2 streams", lambda: model(streams), forward_flops(cfg, geo.latent, 2, geo.context_len)),
        ("plain Wan, 2 streams wide", lambda: model.backbone(*wan_inputs),
         forward_flops(cfg, wide, 1, geo.context_len)),
    ):
        rows.append(dict(preset=preset, shape=shape, layout=layout, tokens=geo.tokens_per_stream
                         * (1 if layout.startswith("t2v") else 2), analytic=expected, counted=counted(fn)))
    return rows


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="wan2.1-t2v-1.3b,wan2.2-ti2v-5b,wan2.1-t2v-14b")
    parser.add_argument("--shapes", default=",".join(perf.SHAPES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = [row for preset in args.presets.split(",") for shape in args.shapes.split(",")
            for row in check(preset.strip(), shape.strip())]
    for row in rows:
        row["equal"] = row["analytic"] == row["counted"]
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(rows, indent=2) + "\n")
    columns = [("preset", "preset", ""), ("clip", "shape", ""), ("layout", "layout", ""), ("tokens", "tokens", ","),
               ("analytic FLOPs", "analytic", ",d"), ("FlopCounterMode", "counted", ",d"), ("equal", "equal", "")]
    print(perf.table(rows, columns))
    return rows


if __name__ == "__main__":
    main()
