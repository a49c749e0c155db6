"""LoRA fine-tuning (peft): what is trained, what is saved, how an adapter loads, fuses and runs.

A tiny random Wan folder stands in for a pretrained backbone (2 layers, the tiny preset's widths);
the run trains a few steps on 16x16 world clips, so the tests check mechanics, not quality.
"""

import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from unityvideo.models import UnityVideoTransformer
from unityvideo.models.checkpoint import load_checkpoint_spec
from unityvideo.models.lora import (ADAPTER_CONFIG, ADAPTER_WEIGHTS, LoraSettings, add_lora, fuse_lora, has_lora,
                                    load_adapter, load_transformer, merge_and_unload, unfuse_lora)
from unityvideo.models.transformer import PRESETS, Stream
from unityvideo.pipeline import UnityVideoPipeline
from unityvideo.training import load_config, train
from unityvideo.training.trainer import Trainer

pytest.importorskip("peft")

MODALITIES = ("depth", "flow")
STEPS = 4


def wan_folder(root):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(1)
    wan = WanTransformer3DModel(**{**PRESETS["tiny"], "num_layers": 2, "out_channels": 48})
    wan.save_pretrained(root / "wan")
    return root / "wan"


def streams(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config.in_channels
    latent = lambda: torch.randn(2, c, 2, 4, 4, generator=g)  # noqa: E731
    context = torch.randn(2, 5, model.config.text_dim, generator=g)
    return [Stream("rgb", latent(), torch.tensor([0.7, 0.3]), context),
            Stream("depth", latent(), torch.tensor([0.0, 0.3]), context)]


@pytest.fixture(scope="module")
def wan(tmp_path_factory):
    return wan_folder(tmp_path_factory.mktemp("wan"))


def adapted(wan, rank=4):
    model = UnityVideoTransformer.from_backbone(wan, modalities=MODALITIES)
    return add_lora(model, LoraSettings(rank=rank, alpha=8))


def test_fresh_adapters_leave_the_output_and_train_only_adapters_and_unity_parts(wan):
    plain = UnityVideoTransformer.from_backbone(wan, modalities=MODALITIES)
    model = adapted(wan)
    with torch.no_grad():
        for a, b in zip(plain(streams(plain)), model(streams(model))):
            assert torch.equal(a, b)  # lora_B starts at zero
    trained = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trained and all(".lora_" in n or not n.startswith("backbone.") for n in trained)
    assert any(n.startswith("patch_embedders.") for n in trained) and "modality_table" in trained
    assert not any(n.startswith("backbone.") and ".lora_" not in n for n in trained)
    # every block's attention and FFN projections are adapted
    for block in range(2):
        for layer in ("attn1.to_q", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"):
            assert f"backbone.blocks.{block}.{layer}.lora_A.default.weight" in trained


def test_bad_targets_are_a_clear_error(wan):
    model = UnityVideoTransformer.from_backbone(wan, modalities=MODALITIES)
    with pytest.raises(ValueError, match="'to_qkv' names no linear layer.*attn1.to_q"):
        add_lora(model, LoraSettings(targets=["to_qkv"]))


def test_fused_equals_unfused_and_unfuse_restores(wan):
    model = adapted(wan)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.normal_(0, 0.05)
        before = {n: t.clone() for n, t in model.state_dict().items()}
        unfused = model(streams(model))
        fuse_lora(model)
        fused = model(streams(model))
        unfuse_lora(model)
        again = model(streams(model))
    for a, b, c in zip(unfused, fused, again):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)  # fused: another order of float ops
        torch.testing.assert_close(a, c, rtol=1e-6, atol=1e-6)
    for name, t in model.state_dict().items():
        torch.testing.assert_close(t, before[name], rtol=0, atol=1e-6)
    plain = merge_and_unload(model)
    assert not has_lora(plain)
    with torch.no_grad():
        for a, b in zip(unfused, plain(streams(plain))):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_an_adapter_that_does_not_fit_is_refused(wan, tmp_path):
    from unityvideo.models.lora import save_adapter

    model = adapted(wan, rank=4)
    save_adapter(model.state_dict(), LoraSettings(rank=4, alpha=8), tmp_path / "a")
    other = UnityVideoTransformer.from_backbone(wan, modalities=("depth",))
    with pytest.raises(ValueError, match="does not fit this model.*unexpected"):
        load_adapter(other, tmp_path / "a")
    with pytest.raises(FileNotFoundError, match="not a LoRA adapter folder"):
        load_adapter(UnityVideoTransformer.from_backbone(wan, modalities=MODALITIES), tmp_path)


# ----- a LoRA run: train -> adapter -> every task -------------------------------------------------------


@pytest.fixture(scope="module")
def lora_run(wan, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-run")
    config = {
        "data": {"world": {"clips": 6, "val_clips": 2, "frames": 4, "size": [16, 16], "cache": str(root / "worlds")},
                 "frames": 4, "size": [16, 16]},
        "model": {"backbone": str(wan), "codec": "pixel4", "lora": {"rank": 4, "alpha": 8}},
        "routing": {"tasks": {"control": 0.3, "estimate": 0.3, "joint": 0.3, "t2v": 0.1}},
        "stages": [{"name": "s", "steps": STEPS, "modalities": {m: 1 for m in MODALITIES}}],
        "optim": {"lr": 1e-2, "warmup_steps": 1, "ema_decay": 0.5},
        "train": {"batch_size": 2, "eval_every": 0, "checkpoint_every": 2, "log_every": 1, "progress": False,
                  "run_dir": str(root / "run")},
    }
    path = root / "lora.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, root / "run", train(load_config(path)) / "export"


def test_a_lora_run_exports_an_adapter_that_changes_only_trained_tensors(lora_run, wan):
    _, run_dir, export = lora_run
    spec = load_checkpoint_spec(export)
    assert spec.adapter == "adapter" and (export / spec.base).resolve() == wan.resolve()
    assert not list((export / "transformer").glob("*.safetensors"))  # no copy of the backbone
    settings = json.loads((export / "adapter" / ADAPTER_CONFIG).read_text())
    assert (settings["r"], settings["lora_alpha"]) == (4, 8)
    saved = load_file(export / "adapter" / ADAPTER_WEIGHTS)
    assert any(".lora_B." in k for k in saved) and "modality_table" in saved
    assert all(".lora_" in k or not k.startswith("backbone.") for k in saved)
    assert any(float(v.abs().max()) > 0 for k, v in saved.items() if ".lora_B." in k)  # it learned something

    model = load_transformer(export)
    base = UnityVideoTransformer.from_backbone(wan, modalities=MODALITIES).state_dict()
    for name, tensor in model.state_dict().items():
        if ".base_layer." in name or (name.startswith("backbone.") and ".lora_" not in name):
            assert torch.equal(tensor, base[name.replace(".base_layer", "")]), name  # the backbone is untouched
    # training checkpoints hold only what is trained (the base is rebuilt from its folder on resume)
    state = load_file(run_dir / "checkpoints" / f"step-{STEPS:06d}" / "state.safetensors")
    assert not any(k.startswith("/model/backbone.") and ".lora_" not in k for k in state)


def test_a_lora_run_resumes_exactly(lora_run, tmp_path, monkeypatch):
    path, _, export = lora_run
    config = load_config(path, [f"train.run_dir={tmp_path / 'run'}"])
    original = Trainer.stop_requested
    monkeypatch.setattr(Trainer, "stop_requested", lambda self: self.step >= STEPS // 2 or original(self))
    train(config)  # stopped half way, with a checkpoint, as by SIGTERM
    monkeypatch.undo()
    resumed = train(load_config(path, [f"train.run_dir={tmp_path / 'run'}"]), resume=True) / "export"
    a = load_file(export / "adapter" / ADAPTER_WEIGHTS)
    b = load_file(resumed / "adapter" / ADAPTER_WEIGHTS)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["t2v", "joint", "control", "estimate"])
def test_every_task_runs_from_a_lora_export_fused_or_not(lora_run, task):
    _, _, export = lora_run
    pipe = UnityVideoPipeline.from_pretrained(export)
    pipe.set_progress_bar_config(disable=True)
    clip = np.random.default_rng(0).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    request = {"t2v": dict(prompt="a ball"), "joint": dict(prompt="a ball", modalities=["depth"]),
               "control": dict(prompt="a ball", conditions={"flow": clip}),
               "estimate": dict(video=clip, modalities=["depth"])}[task]
    kwargs = dict(task=task, num_inference_steps=2, output_type="latent", **request)
    unfused = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    pipe.fuse_lora()
    fused = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    for name, latent in unfused.latents.items():
        torch.testing.assert_close(latent, fused.latents[name], rtol=1e-4, atol=1e-4)


def test_init_from_a_lora_export_fine_tunes_the_fused_model(lora_run, tmp_path):
    path, _, export = lora_run
    out = train(load_config(path, [f"train.run_dir={tmp_path / 'run'}", f"model.init={export}", "model.backbone=null",
                                   "model.lora=null", "stages.0.steps=1"])) / "export"
    spec = load_checkpoint_spec(out)
    assert spec.adapter is None and list((out / "transformer").glob("*.safetensors"))
    with pytest.raises(ValueError, match="differs from the adapter of model.init"):
        train(load_config(path, [f"train.run_dir={tmp_path / 'run2'}", f"model.init={export}",
                                 "model.backbone=null", "model.lora.rank=8", "stages.0.steps=1"]))
