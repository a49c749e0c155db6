"""Every command on a table of bad inputs: a one-line error that names what to fix, exit status 2,
no traceback, and no work done first.

Each case runs `unityvideo.cli.main` in this process, so an unexpected exception fails the test
with its traceback instead of hiding in a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from unityvideo.assets import DEFAULT_CHECKPOINT
from unityvideo.training import trainer as trainer_module
from unityvideo.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """A tiny world, a config training on it, and broken files of every kind."""
    root = tmp_path_factory.mktemp("bad")
    world = root / "world"
    assert main(["world", "--out", str(world), "--clips", "2", "--frames", "4", "--size", "16", "16",
                 "--workers", "1"]) == 0
    config = {"data": {"manifest": str(world / "manifest.csv"), "world": None, "frames": 4, "size": [16, 16]},
              "model": {"preset": "tiny", "overrides": {"num_layers": 1}},
              "stages": [{"name": "s", "steps": 1, "modalities": {"depth": 1}}],
              "train": {"run_dir": str(root / "run"), "batch_size": 2, "eval_every": 0, "progress": False}}
    (root / "ok.yaml").write_text(yaml.safe_dump(config))
    (root / "syntax.yaml").write_text("train: {batch_size: 4\n")
    (root / "latin1.yaml").write_bytes("train:\n  run_dir: caf\xe9\n".encode("latin-1"))
    manifest = (world / "manifest.csv").read_bytes()
    (world / "latin1.csv").write_bytes(manifest.replace(b"a ", "\xe9 ".encode("latin-1"), 1))
    (root / "captions.csv").write_bytes("video,caption\nx.mp4,caf\xe9\n".encode("latin-1"))
    (root / "a-file").write_text("not a folder")
    truncated = root / "truncated"
    truncated.mkdir()
    for item in DEFAULT_CHECKPOINT.iterdir():
        if item.is_file():
            (truncated / item.name).write_bytes(item.read_bytes())
    (truncated / "transformer").mkdir()
    for item in (DEFAULT_CHECKPOINT / "transformer").iterdir():
        data = item.read_bytes()
        (truncated / "transformer" / item.name).write_bytes(data[: len(data) // 2] if item.suffix == ".safetensors" else data)
    videos = root / "videos"
    videos.mkdir()
    (videos / "a.mp4").write_bytes((world / "clips" / "train-00000" / "rgb.mp4").read_bytes())
    return {"root": root, "world": world, "ok": root / "ok.yaml", "syntax": root / "syntax.yaml",
            "latin1": root / "latin1.yaml", "manifest_latin1": world / "latin1.csv", "captions": root / "captions.csv",
            "file": root / "a-file", "truncated": truncated, "videos": videos,
            "rgb": world / "clips" / "train-00000" / "rgb.mp4"}


def train(f, *overrides):
    return ["train", "--config", str(f["ok"]), *overrides]


def generate(*extra):
    return ["generate", "--prompt", "a ball", "--out", "{root}/out.mp4", "--steps", "1", *extra]


# (name, argv with {key} placeholders from `files`, a regex the one-line error must match)
CASES = [
    # numbers of flags
    ("world --fps 0", ["world", "--out", "{root}/w", "--clips", "1", "--fps", "0"], r"--fps: must be an integer >= 1"),
    ("world --clips -3", ["world", "--out", "{root}/w", "--clips", "-3"], r"--clips: must be an integer >= 1"),
    ("world --workers 0", ["world", "--out", "{root}/w", "--clips", "1", "--workers", "0"], r"--workers"),
    ("generate --guidance nan", generate("--guidance", "nan"), r"--guidance: must be a finite number"),
    ("generate --shift -1", generate("--shift", "-1"), r"--shift: must be a number > 0"),
    ("generate --steps 0", generate("--steps", "0"), r"--steps: must be an integer >= 1"),
    ("annotate --max-clips -1", ["annotate", "--input", "{videos}", "--out", "{root}/ann", "--max-clips", "-1"], r"--max-clips"),
    ("eval --batch-size 0", ["eval", "--checkpoint", "{truncated}", "--data", "{world}", "--out", "{root}/e.json",
                             "--batch-size", "0"], r"--batch-size"),
    ("demo --steps 0", ["demo", "--out", "{root}/demo", "--steps", "0"], r"--steps: must be an integer >= 1"),
    # numbers of configs
    ("optim.lr=nan", lambda f: train(f, "optim.lr=.nan"), r"optim.lr=nan must be a finite number"),
    ("optim.lr=-1", lambda f: train(f, "optim.lr=-1"), r"optim.lr=-1.0 must be > 0"),
    ("data.size=[0,0]", lambda f: train(f, "data.size=[0, 0]"), r"data.size\[0\]=0 must be >= 1"),
    ("train.batch_size=0", lambda f: train(f, "train.batch_size=0"), r"train.batch_size=0 must be >= 1"),
    # config files and overrides
    ("YAML syntax error", ["train", "--config", "{syntax}"], r"syntax.yaml.*(line|column)"),
    ("YAML error in an override", lambda f: train(f, "optim.lr=[1"), r"optim.lr=\[1.*YAML"),
    ("stages.9.steps", lambda f: train(f, "stages.9.steps=3"), r"stages has 1 entry.*stages.9 does not exist"),
    ("stages.x.steps", lambda f: train(f, "stages.x.steps=3"), r"'x' is not an index"),
    ("override without =", lambda f: train(f, "optim.lr"), r"must look like section.key=value"),
    ("unknown preset", lambda f: train(f, "model.preset=huge"), r"model.preset.*huge.*tiny"),
    ("no such config", ["train", "--config", "{root}/nope.yaml"], r"no such config file"),
    ("non-UTF-8 config", ["train", "--config", "{latin1}"], r"latin1.yaml.*line 2.*UTF-8"),
    ("non-UTF-8 manifest", lambda f: train(f, f"data.manifest={f['manifest_latin1']}"), r"latin1.csv.*line 2.*UTF-8"),
    ("data.frames longer than the clips", lambda f: train(f, "data.frames=50"), r"data.frames=50.*4 frames"),
    # outputs, checkpoints, devices
    ("world --out is a file", ["world", "--out", "{file}", "--clips", "1"], r"a-file.*not a folder"),
    ("eval --out in a file", ["eval", "--checkpoint", str(DEFAULT_CHECKPOINT), "--data", "{world}",
                                  "--out", "{file}/r.json"], r"a-file.*not a folder"),
    ("truncated safetensors", generate("--checkpoint", "{truncated}"), r"truncated.*diffusion_pytorch_model.safetensors"),
    ("--device cuda:7 without CUDA", generate("--device", "cuda:7"), r"--device: cuda:7.*CUDA"),
    ("--device tpu9", generate("--device", "tpu9"), r"--device: .tpu9.*cpu.*cuda"),
    ("demo --from-scratch --preset X", ["demo", "--out", "{root}/demo", "--from-scratch", "--preset", "X"],
     r"preset.*X.*tiny"),
    ("annotate non-UTF-8 captions", ["annotate", "--input", "{videos}", "--out", "{root}/ann", "--captions", "{captions}"],
     r"captions.csv.*line 2.*UTF-8"),
    ("--resume without a checkpoint", lambda f: ["train", "--config", str(f["ok"]), "--resume", str(f["root"])],
     r"no complete checkpoint"),
    ("generate --task nonsense", generate("--task", "paint"), r"paint"),
    ("generate --input missing", ["generate", "--task", "estimate", "--modality", "depth", "--input",
                                  "{root}/missing.mp4", "--out", "{root}/o.mp4"], r"missing.mp4"),
    ("generate --checkpoint missing", generate("--checkpoint", "{root}/nothing"), r"nothing"),
    ("eval --data missing", ["eval", "--checkpoint", str(DEFAULT_CHECKPOINT), "--data", "{root}/none",
                             "--out", "{root}/e.json"], r"none"),
    # impossible sizes: refused before any work, with the memory they would need
    ("world --frames 10000000", ["world", "--out", "{root}/w", "--clips", "1", "--frames", "10000000"], r"GiB"),
    ("world --size 4096 4096", ["world", "--out", "{root}/w", "--clips", "1", "--size", "4096", "4096"], r"GiB"),
    ("world --size 100000 100000", ["world", "--out", "{root}/w", "--clips", "1", "--size", "100000", "100000"], r"GiB"),
    ("generate --frames 100000", generate("--frames", "100000"), r"GiB"),
]


@pytest.mark.parametrize("name, argv, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_line(files, capsys, name, argv, message):
    assert_one_clear_line(capsys, name, argv(files) if callable(argv) else [a.format(**files) for a in argv], message)


def test_the_non_finite_abort_is_one_clear_line(files, capsys, monkeypatch):
    monkeypatch.setattr(trainer_module, "POISONED_STEPS", {0, 1, 2})
    assert_one_clear_line(capsys, "the non-finite abort", train(files, "train.max_nonfinite=1", "stages.0.steps=4"),
                          r"non-finite steps in a row.*No checkpoint was written")


def assert_one_clear_line(capsys, name, argv, message):
    status = main(argv)
    err = capsys.readouterr().err.strip()
    assert status == 2, f"{name}: exit {status}, stderr: {err}"
    last = err.splitlines()[-1]
    assert "Traceback" not in err and last.startswith("unityvideo "), err
    assert __import__("re").search(message, last), f"{name}: {last!r} does not match {message!r}"
