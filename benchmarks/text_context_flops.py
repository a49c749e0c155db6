"""FLOPs of one forward with Wan's 512 zero-padded text tokens vs a masked context trimmed to the
longest real prompt (counted from the config by `forward_flops`, no weights, no GPU).

    python benchmarks/text_context_flops.py    # writes benchmarks/results/text_context_flops.json
"""

from __future__ import annotations

import json
from pathlib import Path

from unityvideo.models.codec import CODEC_GEOMETRY
from unityvideo.models import forward_flops
from unityvideo.models.transformer import PRESET_CODECS, PRESETS

CASES = [("wan2.1-t2v-1.3b", 33, 256), ("wan2.2-ti2v-5b", 33, 256), ("wan2.1-t2v-14b", 33, 256)]
PROMPT_TOKENS = (32, 64, 128)  # a world caption is 30-60 umT5 tokens
OUT = Path(__file__).resolve().parent / "results" / "text_context_flops.json"


def main() -> int:
    rows = []
    print("| preset | frames x size | streams | context | TFLOP | vs 512 |\n|---|---|---|---|---|---|")
    for preset, frames, size in CASES:
        shape = CODEC_GEOMETRY[PRESET_CODECS[preset]].latent_shape(frames, size, size)
        for streams in (1, 2):
            full = forward_flops(PRESETS[preset], shape, streams, 512)
            for tokens in (512, *PROMPT_TOKENS):
                flops = forward_flops(PRESETS[preset], shape, streams, tokens)
                rows.append({"preset": preset, "frames": frames, "size": size, "streams": streams,
                             "context": tokens, "flops": flops, "saving": 1 - flops / full})
                change = "–" if tokens == 512 else f"{-100 * (1 - flops / full):+.1f} %"
                print(f"| {preset} | {frames}x{size}x{size} | {streams} | {tokens} | {flops / 1e12:.2f} | {change} |")
    OUT.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
