"""The speed benchmarks run end to end on the CPU at a tiny size and write well-formed results; their
FLOP counts agree with torch's FlopCounterMode."""

import importlib.util
import os
import subprocess
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--preset", "tiny", "--layers", "1", "--shape", "4x32x32", "--warmup", "1", "--device", "cpu",
        "--check-flops"]


def load(name: str):
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "train.json"
    load("train_step").main([*TINY, "--steps", "2", "--tasks", "t2v,control,t2v-authors", "--out", str(out)])
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def generate_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "generate.json"
    tasks = "t2v,control-isolated,control-cached,estimate-isolated,estimate-cached,wan"
    load("generate").main([*TINY, "--steps", "2", "--tasks", tasks, "--out", str(out)])
    return json.loads(out.read_text())


def test_train_step_writes_every_task_and_the_baselines(train_results):
    rows = {r["task"]: r for r in train_results["results"]}
    assert list(rows) == ["t2v", "control", "t2v-authors", "wan (1x tokens)", "wan (2x tokens)"]
    assert train_results["environment"]["measured_peak_tflops"] > 0
    assert train_results["geometry"]["latent_per_stream"] == [48, 4, 8, 8]
    for row in rows.values():
        assert row["step_time_s"] > 0 and len(row["step_times_s"]) == 2
        assert row["tokens_per_s"] == pytest.approx(row["tokens"] / row["step_time_s"])
        assert 0 < row["mfu"] < 1.5 and row["peak_memory_mib"] > 0
        # model FLOPs are 3 x forward; the counted ones add attention's recomputation in its backward
        # and lack the unneeded input gradient of the first layers: a few percent apart at this size
        assert row["counted_flops"] == pytest.approx(row["flops_per_step"], rel=0.1)
    assert rows["t2v"]["tokens"] * 2 == rows["control"]["tokens"] == rows["wan (2x tokens)"]["tokens"]
    assert "overhead_vs_wan_pct" in rows["t2v"] and "overhead_vs_wan_pct" in rows["control"]
    assert rows["t2v-authors"]["time_vs_ours_t2v"] > 0


def test_generate_flops_match_the_counter_and_the_cache_matches(generate_results):
    rows = {r["task"]: r for r in generate_results["results"]}
    assert set(rows) == {"t2v", "control-isolated", "control-cached", "estimate-isolated", "estimate-cached", "wan"}
    for row in rows.values():
        assert row["counted_flops"] == row["flops_per_generation"]
        assert row["generation_s"] > 0 and row["step_s"] == pytest.approx(row["generation_s"] / 2)
    for task in ("control", "estimate"):
        cached = rows[f"{task}-cached"]
        assert cached["max_abs_diff_vs_isolated"] <= 1e-4
        assert cached["flops_per_generation"] < rows[f"{task}-isolated"]["flops_per_generation"]
        assert cached["speedup_vs_isolated"] > 0
    estimate = generate_results["model"]["cache_estimate_mib"]
    assert rows["control-cached"]["cache_mib"] == pytest.approx(estimate)  # one build: one condition context
    assert rows["estimate-cached"]["cache_mib"] == pytest.approx(2 * estimate)  # caption and negative prompt
    assert "overhead_vs_wan_pct" in rows["t2v"]


def test_generate_prints_the_table_last(generate_results, capsys, tmp_path):
    load("generate").main(["--preset", "tiny", "--layers", "1", "--shape", "4x32x32", "--steps", "1",
                           "--warmup", "0", "--device", "cpu", "--tasks", "t2v", "--out", str(tmp_path / "g.json")])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-3].startswith("| task |") and lines[-1].startswith("| t2v |")


def test_flop_check_at_real_sizes_on_meta():
    rows = load("flop_check").main(["--presets", "wan2.1-t2v-1.3b", "--shapes", "33x256x256"])
    assert len(rows) == 3 and all(r["analytic"] == r["counted"] for r in rows)


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit, match="unknown"):
        load("train_step").main([*TINY, "--tasks", "t2v,nope"])
    with pytest.raises(SystemExit, match="FRAMESxHEIGHTxWIDTH"):
        load("generate").main(["--preset", "tiny", "--shape", "big"])


def test_every_ablation_arm_is_a_valid_config_of_the_pinned_recipe(tmp_path):
    ablations = load("ablations")
    base = BENCHMARKS.parent / "configs" / "tiny-world.yaml"
    for name, arm in ablations.ARMS.items():
        config = ablations.arm_config(base, arm, tmp_path / name, seed=1, steps=40, batch=8, frames=4)
        assert config.total_steps == 40 and config.train.seed == 1 and config.data.frames == 4
        assert set(config.stages[0].modalities) == set(arm.modalities)
        assert {t for t, p in config.routing.tasks.items() if p > 0} == set(arm.tasks)
    pinned = ablations.arm_config(base, ablations.ARMS["full"], tmp_path / "full", 0, 40, 8)
    assert (pinned.model.latent_norm, pinned.routing.timesteps.shift) == ("none", 1.0)
    table4 = [ablations.arm_config(base, ablations.ARMS[a], tmp_path / a, 0, 40, 8).model.overrides
              for a in ablations.TABLES[4][1]]
    assert [(o.get("in_context", True), o.get("adaln_table", True)) for o in table4] == \
        [(False, False), (False, True), (True, False), (True, True)]


def test_ablation_tables_average_seeds_and_mark_missing_arms():
    ablations = load("ablations")
    results = [{"arm": "full", "seed": 0, "val/loss": 1.0}, {"arm": "full", "seed": 1, "val/loss": 3.0}]
    assert ablations.summarize(results, "full", "val/loss") == (2.0, 1.0, 2)
    table = ablations.markdown_tables(results, [4])
    assert "| 2.0000 ± 1.0000 |" in table and "| — |" in table


def test_recipe_memory_measures_the_1_3b_activations_per_token_and_layer(tmp_path):
    """One block of Wan2.1-1.3B saves about 137 KiB per token for backward under bf16 autocast, the
    figure the recipes' memory notes rest on; full fine-tuning state is 20 bytes per parameter."""
    (row,) = load("recipe_memory").main(["--sizes", "wan2.1-t2v-1.3b", "--out", str(tmp_path / "m.json")])
    assert 130 * 1024 < row["activation_bytes_per_token_layer"] < 145 * 1024
    assert row["state_bytes"]["full"] == 20 * row["parameters"]
    assert row["lora_trained"] < row["parameters"] / 20  # rank 32: 3 % of the model
    fits = row["fits"]
    assert fits["80 GB/full/1gpu/ckpt-full"] > fits["80 GB/full/1gpu/ckpt-none"] >= 1


def test_the_gpu_benchmark_script_rehearses_on_the_cpu(tmp_path):
    """benchmarks/gpu_check.sh drives train_step.py and generate.py: at tiny size on the CPU every stage
    must pass, so a flag renamed in one of them is caught before a GPU run is spent on it."""
    env = {**os.environ, "DEVICE": "cpu", "SIZE": "tiny", "COMPILE": "0", "OUT": str(tmp_path / "out"),
           "WORK": str(tmp_path / "work"), "PY": sys.executable, "BUDGET": "400"}
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh")], cwd=BENCHMARKS.parent, env=env,
                          capture_output=True, text=True, timeout=480)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    table = (tmp_path / "out" / "table.md").read_text()
    assert "train_1.3b" in table and "generate_5b" in table
    assert "stages: install=0 smoke=0 train_1.3b=0 train_5b=0 generate_5b=0" in done.stdout
