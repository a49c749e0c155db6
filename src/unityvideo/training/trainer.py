"""The UnityVideo training loop, readable top to bottom (nanoGPT's train.py, with torchrun scale).

    train(load_config("configs/tiny-world.yaml"))              # one process
    torchrun --nproc_per_node 8 -m unityvideo.cli train --config configs/...yaml train.parallel=fsdp

One step: every process takes its share of the global batch (see data.py for the fixed sample
order), in micro-batches; each sample gets a task, a modality and per-stream timesteps (flow.py);
samples are grouped by modality, run through the model, and the flow-matching loss of their noisy
streams is averaged over the global batch. Then: NaN/inf check, gradient clipping, AdamW, warmup +
cosine learning rate, EMA; logs, validation, checkpoints and exports at their intervals.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..flow import TASK_TABLE, TASKS, Route, flow_loss, route_batch, validation_route
from ..modalities import STREAM_NAMES, stale_encodings
from ..models import RGB, LatentNorm, UnityVideoTransformer, load_codec, load_text_encoder
from ..models.checkpoint import (SPEC_NAME, TRANSFORMER_DIR, CheckpointSpec, load_checkpoint_spec, place_asset,
                                 resolve_asset)
from ..models.lora import (add_lora, has_lora, load_transformer, merge_and_unload, read_adapter_settings,
                           save_adapter, trained_names)
from .checkpoint import find_checkpoint, last_good_checkpoint, load_checkpoint, point_latest_at, save_checkpoint
from .config import Config, dump_config
from .data import (ClipStreams, LatentCache, MemoryLatents, StepBatches, TextBank, collate_samples,
                   fit_stage_modalities, manifest_of, modalities_of, prepare_world, sample_noise, split_records)
from .logger import MetricLogger
from .parallel import (Runtime, all_reduce_max, all_reduce_max_tensor, all_reduce_sum, apply_parallel,
                       choose_parallel, compute_dtype, init_runtime, inner_model, shutdown)

log = logging.getLogger("unityvideo.train")

STREAMS = STREAM_NAMES  # the loss slots: rgb and the five modalities
EVAL_NOISE_SEED = 777


class NonFiniteLossError(RuntimeError):
    """The run diverged (non-finite losses or weights); the message names the checkpoint to go back to."""

    user_error = True


def train(config: Config, resume: str | Path | bool | None = None) -> Path:
    """Run (or resume) a training run; returns the run folder. Works under torchrun."""
    runtime = init_runtime()
    ok = False
    try:
        trainer = Trainer(config, runtime)
        trainer.setup(resume)
        try:
            trainer.fit()
        finally:
            trainer.restore_signal_handlers()
        ok = True
        return trainer.run_dir
    finally:
        if ok:
            shutdown(runtime)
        elif dist.is_initialized():
            dist.destroy_process_group()


@dataclass
class StepStats:
    """Per-step sums over samples, all-reduced as one vector: total, by task, by stream modality."""

    values: torch.Tensor = field(default_factory=lambda: torch.zeros(2 * (1 + len(TASKS) + len(STREAMS)),
                                                                      dtype=torch.float64))

    def add(self, per_sample: torch.Tensor, tasks: list[str], modalities: list[str | None]) -> None:
        for loss, task, modality in zip(per_sample.detach().double().cpu().tolist(), tasks, modalities):
            for slot in (0, 1 + TASKS.index(task), 1 + len(TASKS) + STREAMS.index(modality or RGB)):
                self.values[2 * slot] += loss
                self.values[2 * slot + 1] += 1

    def summary(self) -> dict[str, float]:
        names = ["loss"] + [f"loss/{t}" for t in TASKS] + [f"loss/{m}" for m in STREAMS]
        sums, counts = self.values[0::2], self.values[1::2]
        return {n: float(s / c) for n, s, c in zip(names, sums, counts) if c > 0}


class Trainer:
    def __init__(self, config: Config, runtime: Runtime):
        self.config = config
        self.runtime = runtime
        self.run_dir = Path(config.train.run_dir)
        self.step = 0
        self.nonfinite_total = 0
        self.nonfinite_in_row = 0
        self.last_finite_step = -1  # index of the newest step whose loss and gradient were finite
        self.stop_signal: str | None = None

    # ----- setup ----------------------------------------------------------------------------------

    def setup(self, resume: str | Path | bool | None) -> None:
        cfg, rt = self.config, self.runtime
        tc = cfg.train
        if tc.batch_size % rt.world_size:
            raise ValueError(f"train.batch_size={tc.batch_size} is not divisible by the {rt.world_size} processes")
        per_rank = tc.batch_size // rt.world_size
        if tc.micro_batch_size and per_rank % tc.micro_batch_size:
            raise ValueError(f"train.micro_batch_size={tc.micro_batch_size} must divide the per-process batch "
                             f"{per_rank} (batch_size {tc.batch_size} / {rt.world_size} processes)")
        torch.manual_seed(tc.seed)
        self.resuming = bool(resume)
        if rt.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        self._barrier()
        self._prepare_data()
        self._build_model()
        self._build_optimizer()
        checkpoint = self._resume_path(resume)
        if checkpoint is not None:
            self._load(checkpoint)
        self._write_config()
        self.logger = MetricLogger(self.run_dir, enabled=rt.is_main, resume_step=self.step,
                                   tensorboard=tc.tensorboard)
        self._install_signal_handlers()

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _prepare_data(self) -> None:
        cfg, rt = self.config, self.runtime
        datas = []  # distinct DataConfigs (stages without their own data share the run's)
        for stage in cfg.stages:
            data = cfg.stage_data(stage)
            if all(data is not d for d in datas):
                datas.append(data)
        if rt.is_main:
            for data in datas:
                if data.world is not None:
                    prepare_world(data.world, self.run_dir)
        self._barrier()
        self.stage_clips, self.val_clips = [], []
        built: dict[int, tuple[ClipStreams, ClipStreams | None]] = {}
        for stage in cfg.stages:
            data = cfg.stage_data(stage)
            if id(data) not in built:
                train_records, val_records = split_records(manifest_of(data, self.run_dir), data.val_manifest,
                                                           data.world)
                val = ClipStreams(val_records, data, cfg.train.seed) if val_records else None
                built[id(data)] = (ClipStreams(train_records, data, cfg.train.seed, crop=True), val)
            self.stage_clips.append(built[id(data)][0])
            self.val_clips.append(built[id(data)][1])
        for index, (stage, clips) in enumerate(zip(cfg.stages, self.stage_clips)):
            fit_stage_modalities(stage, index, clips.records, manifest_of(cfg.stage_data(stage), self.run_dir),
                                 warn=rt.is_main)
        first = cfg.stage_data(cfg.stages[0])
        encoder = load_text_encoder(cfg.model.text_encoder, cache_dir=first.text_cache)
        self.text = TextBank(encoder, rt.device, self._text_convention(encoder))
        texts = [r.caption for clips in self.stage_clips + [v for v in self.val_clips if v] for r in clips.records]
        texts += [cfg.routing.modality_prompt(m) for m in cfg.modalities]
        self.text.warm(texts)
        self.codec = load_codec(cfg.model.codec, cfg.model.codec_folder).to(rt.device)
        self.val_latents = [MemoryLatents() for _ in cfg.stages]
        self.latent_caches = [LatentCache(cfg.stage_data(s).latent_cache, cfg.model.codec, cfg.stage_data(s))
                              if cfg.stage_data(s).latent_cache else None for s in cfg.stages]
        self.latent_norm = self._latent_norm()

    def _text_convention(self, encoder) -> str:
        """model.text_convention, where "auto" keeps model.init's (a fine-tune stays in the convention its
        model learned), else the encoder's own (umT5: Wan's zero padding without a mask)."""
        chosen = self.config.model.text_convention
        if chosen != "auto":
            return chosen
        init = Path(self.config.model.init) if self.config.model.init else None
        if init is not None and (init / SPEC_NAME).is_file():
            return load_checkpoint_spec(init).text_convention
        return encoder.convention

    def _latent_norm(self, sample_clips: int = 32) -> LatentNorm:
        """The run's LatentNorm: kept in the run folder (a resume reuses it), inherited from model.init
        (a fine-tune stays in the latent space its model learned), else measured on training clips."""
        cfg = self.config
        path = self.run_dir / LATENT_NORM_FILE
        if self.resuming and path.is_file():
            return LatentNorm.from_json(json.loads(path.read_text()))
        init = Path(cfg.model.init) if cfg.model.init else None  # may also be a bare transformer folder
        inherited = LatentNorm({})
        if init is not None and (init / SPEC_NAME).is_file():
            spec = load_checkpoint_spec(init)
            # a stream whose picture format changed since model.init was trained is measured afresh
            changed = set(stale_encodings(spec.encodings, cfg.modalities))
            if changed and self.runtime.is_main:
                log.info("model.init learned another picture format of %s: its latent norm is measured again",
                         sorted(changed))
            inherited = LatentNorm({k: v for k, v in LatentNorm.from_json(spec.latent_norm).stats.items()
                                    if k not in changed})
        wanted = [RGB, *cfg.modalities] if cfg.model.latent_norm == "per_stream" else []
        missing = [s for s in wanted if s not in inherited.stats]
        measured = LatentNorm.measure(self._sample_latents(missing, sample_clips)) if missing else LatentNorm({})
        norm = LatentNorm({**inherited.stats, **measured.stats})
        if self.runtime.is_main and norm.stats:
            path.write_text(json.dumps(norm.to_json(), indent=1) + "\n")
            log.info("latent norm (mean, std) per stream: %s",
                     {k: (round(m, 4), round(sd, 4)) for k, (m, sd) in norm.stats.items()})
        elif self.runtime.is_main:
            path.unlink(missing_ok=True)  # an earlier run's values must not reach a later resume
        return norm

    def _sample_latents(self, streams: list[str], clips: int) -> dict[str, list[torch.Tensor]]:
        """Raw codec latents of the first training clips of every stream, from the first stage that has it."""
        found: dict[str, list[torch.Tensor]] = {}
        for stream in streams:
            index = next((i for i, s in enumerate(self.config.stages) if stream == RGB or stream in s.modalities), 0)
            data = self.stage_clips[index]
            route = Route("estimate", None if stream == RGB else stream, 0.0, 0.0, False, False)
            found[stream] = [self._codec_latent(item, stream, item["rgb" if stream == RGB else "modality"],
                                                self.latent_caches[index])
                             for item in (data[_EvalRef(c, route)] for c in range(min(clips, len(data))))]
        return found

    def _build_model(self) -> None:
        cfg, rt = self.config, self.runtime
        model = self._base_model()
        channels = (model.config.in_channels, model.config.out_channels or model.config.in_channels)
        if channels != (self.codec.latent_channels,) * 2:
            raise ValueError(f"the transformer takes {channels[0]} and predicts {channels[1]} latent channels, but "
                             f"model.codec={cfg.model.codec} has {self.codec.latent_channels}: choose the codec the "
                             "backbone was trained with (wan2.1: 16, wan2.2: 48, pixel2: 12, pixel4: 48)")
        if cfg.model.lora is not None and not has_lora(model):
            add_lora(model, cfg.model.lora)
        model.train()
        self.num_params = sum(p.numel() for p in model.parameters())
        self.parallel = choose_parallel(cfg.train.parallel, rt, self.num_params, cfg.train.fsdp_min_params)
        self.dtype = compute_dtype(cfg.train.precision, rt.device)
        self.wrapped = apply_parallel(model, self.parallel, rt, self.dtype, cfg.train.activation_checkpointing,
                                      cfg.train.compile)
        self.model = inner_model(self.wrapped)
        # Only what is trained has an EMA (under LoRA a few MB instead of a second copy of the backbone).
        self.trained = trained_names(self.model)
        params = dict(self.model.named_parameters())
        self.ema = {n: params[n].detach().clone() for n in self.trained} if cfg.optim.ema_decay > 0 else None
        if rt.is_main:
            trained = sum(params[n].numel() for n in self.trained)
            log.info("model: %s parameters (%s), %s trained, %s, %d process(es), %s", f"{self.num_params:,}",
                     self.model.parameter_counts(), f"{trained:,}", self.parallel, rt.world_size, self.dtype)

    def _base_model(self) -> UnityVideoTransformer:
        """model.init (a LoRA export: with its adapter when this run trains LoRA on, else fused), a Wan
        backbone, or a preset."""
        cfg = self.config
        m = cfg.model
        unity = dict(modalities=cfg.modalities)
        if m.init:
            model = load_transformer(m.init)
            if has_lora(model):
                settings = read_adapter_settings(Path(m.init) / load_checkpoint_spec(m.init).adapter)
                if m.lora is None:
                    merge_and_unload(model)
                elif m.lora != settings:
                    raise ValueError(f"model.lora={m.lora} differs from the adapter of model.init={m.init} "
                                     f"({settings}); drop model.lora to fine-tune it fully, or match it")
            missing = set(cfg.modalities) - set(model.config.modalities)
            if missing:
                raise ValueError(f"model.init={m.init} has no experts for {sorted(missing)}; add them with a "
                                 "preset/backbone start or drop them from the stages")
            return model
        if m.backbone:
            return UnityVideoTransformer.from_backbone(m.backbone, **unity, **m.overrides)
        # a preset takes its latent channels from the run's codec unless overridden
        channels = dict(in_channels=self.codec.latent_channels)
        return UnityVideoTransformer.from_preset(m.preset, **{**unity, **channels, **m.overrides})

    def lora_base(self) -> str | None:
        """The model a LoRA export's adapter applies to: model.init's base when its adapter is continued,
        else model.init or model.backbone."""
        m = self.config.model
        if m.lora is None:
            return None
        if m.init and (Path(m.init) / SPEC_NAME).is_file():
            spec = load_checkpoint_spec(m.init)
            if spec.adapter is not None:
                return resolve_asset(m.init, spec.base, "base model")
        return m.init or m.backbone

    def _build_optimizer(self) -> None:
        o = self.config.optim
        groups: dict[tuple[bool, bool], list] = {}
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            unity = not name.startswith("backbone.")
            decay = p.ndim >= 2 and "table" not in name  # no decay on biases, norms, modulation tables
            groups.setdefault((unity, decay), []).append(p)
        self.optimizer = torch.optim.AdamW(
            [{"params": ps, "lr": (o.unity_lr or o.lr) if unity else o.lr, "weight_decay": o.weight_decay if decay else 0.0,
              "name": f"{'unity' if unity else 'backbone'}{'' if decay else '_no_decay'}"}
             for (unity, decay), ps in sorted(groups.items())],
            betas=tuple(o.betas), eps=o.eps)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]

    def lr_factor(self, step: int) -> float:
        """Linear warmup to 1, then cosine to min_lr_ratio at the last step."""
        o, total = self.config.optim, self.config.total_steps
        if step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        progress = (step - o.warmup_steps) / max(1, total - o.warmup_steps)
        return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def _resume_path(self, resume) -> Path | None:
        if resume in (None, False):
            return None
        return find_checkpoint(self.run_dir if resume is True else resume)

    def _load(self, folder: Path) -> None:
        meta, ema = load_checkpoint(folder, self.model, self.optimizer)
        self.step = int(meta["step"])
        self.nonfinite_total = int(meta.get("nonfinite_total", 0))
        self.nonfinite_in_row = int(meta.get("nonfinite_in_row", 0))
        self.last_finite_step = self.step - 1 - self.nonfinite_in_row
        if self.ema is not None and ema:
            for name, value in self.ema.items():
                _copy_full_into(value, ema[name])
        if self.runtime.is_main:
            log.info("resumed from %s at step %d", folder, self.step)

    def _write_config(self) -> None:
        if not self.runtime.is_main:
            return
        path = self.run_dir / "config.yaml"
        text = dump_config(self.config)
        if path.exists() and path.read_text() != text:
            shutil.copy(path, self.run_dir / f"config.before-step-{self.step:06d}.yaml")  # keep what ran before
        path.write_text(text)

    def _install_signal_handlers(self) -> None:
        def handler(signum, _frame):
            self.stop_signal = signal.Signals(signum).name
            log.warning("%s received: stopping after this step with a checkpoint", self.stop_signal)

        self._old_handlers = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore_signal_handlers(self) -> None:
        for sig, old in getattr(self, "_old_handlers", {}).items():
            signal.signal(sig, old)

    # ----- the loop -------------------------------------------------------------------------------

    def fit(self) -> None:
        cfg, rt, tc = self.config, self.runtime, self.config.train
        total = cfg.total_steps
        batches = StepBatches(cfg, [len(c) for c in self.stage_clips], rt.rank, rt.world_size, self.step)
        loader = iter(torch.utils.data.DataLoader(
            _StageItems(self.stage_clips, cfg), batch_sampler=_RefBatches(batches), collate_fn=collate_samples,
            num_workers=cfg.stage_data(cfg.stages[0]).num_workers))
        micro_steps = (tc.batch_size // rt.world_size) // (tc.micro_batch_size or tc.batch_size // rt.world_size)
        bar = _progress(tc.progress and rt.is_main, self.step, total)
        if self.step == 0 and tc.eval_every > 0:
            self._validate()
        while self.step < total:
            start = time.perf_counter()
            stats = StepStats()
            for micro in range(micro_steps):
                items = next(loader)
                with self._no_sync(last=micro == micro_steps - 1):
                    per_sample, tasks, mods = self.forward(items)
                    loss = per_sample.sum() / (tc.batch_size // rt.world_size)
                    if self.step in POISONED_STEPS:
                        loss, per_sample = loss * float("nan"), per_sample * float("nan")
                    loss.backward()
                stats.add(per_sample, tasks, mods)
            all_reduce_sum(stats.values)
            metrics = stats.summary()
            applied = self.optimizer_step(metrics["loss"])
            self.step += 1
            metrics.update(lr=self.optimizer.param_groups[0]["lr"], step_time=time.perf_counter() - start,
                           nonfinite_total=self.nonfinite_total, stage=cfg.stage_at(self.step - 1)[0],
                           skipped=not applied, **self.last_grad)
            if self.step % tc.log_every == 0 or self.step == total:
                self.logger.log(self.step, "train", metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}", refresh=False)
            self._after_step()
            if self.stop_requested():
                self.save()
                if rt.is_main:
                    log.warning("stopped by %s at step %d; resume with --resume", self.stop_signal or "a signal", self.step)
                break
        bar.close()
        self._report_skipped_clips()
        if self.step >= total:
            if tc.checkpoint_every <= 0 or self.step % tc.checkpoint_every:
                self.save()
            self.export(self.run_dir / "export")
        self.logger.close()

    def _after_step(self) -> None:
        tc = self.config.train
        if tc.eval_every > 0 and (self.step % tc.eval_every == 0 or self.step == self.config.total_steps):
            self._validate()
        if tc.checkpoint_every > 0 and self.step % tc.checkpoint_every == 0:
            self.save()
        if tc.export_every > 0 and self.step % tc.export_every == 0 and self.step < self.config.total_steps:
            self.export(self.run_dir / "exports" / f"step-{self.step:06d}")

    def _validate(self) -> None:
        """Validation that cannot cost the run: a failure is logged with its traceback and training (and
        the export at the end) goes on."""
        try:
            self.evaluate()
        except Exception:  # noqa: BLE001 - a finished run must never be lost to its validation
            self.wrapped.train()
            if self.runtime.is_main:
                log.exception("step %d: validation failed; training goes on without it", self.step)

    def _report_skipped_clips(self) -> None:
        """The clips this run could not use, each counted once over every process (a clip's code is
        its reason's index + 1, max-reduced), logged by reason and written to metrics.jsonl."""
        from ..data import SKIP_REASONS

        datasets = list({id(c): c for c in self.stage_clips + self.val_clips if c is not None}.values())
        codes = torch.zeros(sum(len(c.records) for c in datasets), dtype=torch.float64)
        offset = 0
        for clips in datasets:
            for index, reason in clips.skipped_clips.reasons.items():
                codes[offset + index] = 1 + SKIP_REASONS.index(reason)
            offset += len(clips.records)
        codes = all_reduce_max_tensor(codes)
        totals = {reason: int((codes == 1 + i).sum()) for i, reason in enumerate(SKIP_REASONS)}
        totals = {r: n for r, n in totals.items() if n}
        if not self.runtime.is_main:
            return
        if totals:
            log.warning("skipped %d of %d clips: %s (each named in a warning above)", sum(totals.values()),
                        len(codes), ", ".join(f"{r}={n}" for r, n in totals.items()))
        self.logger.log(self.step, "data", {"skipped_clips": sum(totals.values()),
                                            **{f"skipped_clips/{r}": n for r, n in totals.items()}})

    def stop_requested(self) -> bool:
        """Any process got SIGTERM/SIGINT: all stop together after this step."""
        return all_reduce_max(1.0 if self.stop_signal else 0.0) > 0

    def _no_sync(self, last: bool):
        """Gradient accumulation: reduce gradients across processes only on the last micro-batch."""
        if self.parallel == "ddp" and not last:
            return self.wrapped.no_sync()
        if self.parallel == "fsdp":
            self.wrapped.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    # ----- one micro-batch ------------------------------------------------------------------------

    def forward(self, items: list[dict]) -> tuple[torch.Tensor, list[str], list[str | None]]:
        """Per-sample losses (B,) of a micro-batch, in the items' order, with their tasks and modalities."""
        stage_index = items[0]["stage"]  # the batch loader's decision (StepBatches)
        routing = self.config.stage_routing(self.config.stages[stage_index])
        routes = [item["route"] for item in items]
        groups = self._groups(items, routes, routing, self.latent_caches[stage_index], self.config.train.seed)
        # FSDP2: all processes make the same number of model calls (see RoutedModel)
        calls = int(all_reduce_max(float(len(groups)))) if self.parallel == "fsdp" else 0
        outputs, touch = self._call([g.streams for g in groups], calls)
        per_sample = torch.zeros(len(items), device=self.runtime.device)
        for group, preds in zip(groups, outputs):
            per_sample[group.indices] = flow_loss(preds, group)
        return per_sample + touch, [r.task for r in routes], [r.modality for r in routes]

    def _call(self, streams: list[list], calls: int = 0):
        autocast = torch.autocast("cuda", dtype=self.dtype) if (
            self.runtime.device.type == "cuda" and self.dtype != torch.float32 and self.parallel != "fsdp") \
            else contextlib.nullcontext()
        with autocast:
            return self.wrapped(streams, calls)

    def _groups(self, items, routes, routing, cache, noise_seed):
        rgb = torch.stack([self._latent(item, RGB, item["rgb"], cache) for item in items])
        mods = [self._latent(item, r.modality, item["modality"], cache) if r.modality else None
                for item, r in zip(items, routes)]
        noises = [sample_noise(noise_seed, item["number"], tuple(rgb.shape[1:]), r.modality is not None)
                  for item, r in zip(items, routes)]
        noises = [(a.to(rgb.device), None if b is None else b.to(rgb.device)) for a, b in noises]
        return route_batch(routing, routes, rgb, mods, noises, [item["caption"] for item in items], self.text)

    def _latent(self, item: dict, stream: str, video: torch.Tensor, cache: LatentCache | None) -> torch.Tensor:
        """The stream's latent as the model sees it (after the run's LatentNorm)."""
        return self.latent_norm.normalize(self._codec_latent(item, stream, video, cache), stream)

    @torch.no_grad()
    def _codec_latent(self, item: dict, stream: str, video: torch.Tensor, cache: LatentCache | None) -> torch.Tensor:
        """The codec's latent of one clip's stream, from the latent cache when it has it."""
        clip_id = item.get("source_ids", {}).get(stream, item["clip_id"])  # the clip `video` comes from
        if cache is not None:
            found = cache.get(clip_id, stream)
            if found is not None:
                return found.to(self.runtime.device)
        latent = self.codec.encode(video[None].to(self.runtime.device))[0]
        if cache is not None:
            cache.put(clip_id, stream, latent)
        return latent

    # ----- the update -----------------------------------------------------------------------------

    def optimizer_step(self, loss: float) -> bool:
        """Clip, step, schedule, EMA; or skip a non-finite step. Returns whether the step was applied."""
        o = self.config.optim
        factor = self.lr_factor(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        norm = _grad_norm(self.model, o.grad_clip)
        self.last_grad = {"grad_norm": norm}
        if not (math.isfinite(loss) and math.isfinite(norm)):
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_total += 1
            self.nonfinite_in_row += 1
            log.warning("step %d: non-finite loss %s / grad norm %s: step skipped (%d in a row, %d in total)",
                        self.step, loss, norm, self.nonfinite_in_row, self.nonfinite_total)
            if self.nonfinite_in_row > self.config.train.max_nonfinite:
                raise NonFiniteLossError(
                    f"{self.nonfinite_in_row} non-finite steps in a row (train.max_nonfinite="
                    f"{self.config.train.max_nonfinite}) at step {self.step}. {self._good_checkpoint_advice()}")
            return False
        self.nonfinite_in_row = 0
        self.last_finite_step = self.step
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._update_ema()
        return True

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is None:
            return
        o = self.config.optim
        decay = min(o.ema_decay, (1 + self.step) / (10 + self.step)) if o.ema_warmup else o.ema_decay
        params = dict(self.model.named_parameters())
        for name, average in self.ema.items():
            average.lerp_(params[name].detach(), 1 - decay)

    # ----- validation -----------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self) -> dict[str, float] | None:
        """Validation loss of every task x modality on fixed clips, timesteps and noise (EMA weights),
        and of control and estimate with another clip's condition (`.../unrelated_condition`: the
        model uses its condition stream only if that loss is higher). One-step estimates
        (`routing.estimate_mode: one_step`) are scored as they are trained: once, at t = 1 with a zero
        input, instead of at each `train.eval_timesteps`.

        Every process evaluates the same samples (FSDP needs every process in every forward)."""
        stage_index = self.config.stage_at(max(0, self.step - 1))[0]
        clips = self.val_clips[stage_index]
        if clips is None:
            return None
        cfg = self.config
        routing = cfg.stage_routing(cfg.stages[stage_index])
        tasks = [t for t in TASKS if any(cfg.stage_routing(s).tasks.get(t, 0) > 0 for s in cfg.stages)]
        # the run's modalities that this stage's validation clips have (a world stage has all five, an
        # annotated real-video stage often fewer)
        modalities = [m for m in cfg.modalities if m in modalities_of(clips.records)]
        specs = [(t, m, False) for t in tasks for m in (modalities if TASK_TABLE[t].has_modality else [None])]
        # The same samples with another clip's condition: if the loss does not rise, the model ignores it.
        specs += [(t, m, True) for t, m, _ in specs if t in CONDITION_OF and len(clips) > 1]
        self.wrapped.eval()
        sums: dict[str, list[float]] = {}
        with self._ema_weights():
            for t, m, unrelated in specs:
                times = (1.0,) if routing.one_step(t) else cfg.train.eval_timesteps
                refs = [(clip, t_val) for clip in range(len(clips)) for t_val in times]
                for start in range(0, len(refs), max(1, cfg.train.batch_size)):
                    chunk = refs[start:start + max(1, cfg.train.batch_size)]
                    items, routes = [], []
                    for clip, t_val in chunk:
                        route = validation_route(routing, t, m, t_val)
                        item = clips[_EvalRef(clip, route)]
                        if unrelated:
                            other = clips[_EvalRef((clip + 1) % len(clips), route)]
                            condition = RGB if CONDITION_OF[t] == "rgb" else m
                            item = {**item, CONDITION_OF[t]: other[CONDITION_OF[t]],
                                    "source_ids": {condition: other["clip_id"]}}  # its latent is the other clip's
                        items.append({**item, "number": clip * 1000 + int(t_val * 999)})
                        routes.append(route)
                    groups = self._groups(items, routes, routing, self.val_latents[stage_index],
                                          cfg.train.seed + EVAL_NOISE_SEED)
                    outputs, _ = self._call([g.streams for g in groups])
                    for group, preds in zip(groups, outputs):
                        losses = flow_loss(preds, group).double().cpu().tolist()
                        keys = ((f"val/{t}/{m}/unrelated_condition", f"val/{t}/unrelated_condition") if unrelated
                                else (f"val/{t}/{m or RGB}", f"val/{t}", f"val/{m or RGB}", "val/loss"))
                        for key in keys:
                            entry = sums.setdefault(key, [0.0, 0])
                            entry[0] += sum(losses)
                            entry[1] += len(losses)
        self.wrapped.train()
        metrics = {k: s / n for k, (s, n) in sums.items()}
        self.logger.log(self.step, "val", metrics)
        return metrics

    @contextlib.contextmanager
    def _ema_weights(self):
        """Temporarily load the EMA weights into the model (what the export will contain)."""
        if self.ema is None:
            yield
            return
        params = {n: p for n, p in self.model.named_parameters() if n in self.ema}
        backup = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.ema[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(backup[n])

    # ----- checkpoints and export -----------------------------------------------------------------

    def save(self) -> Path | None:
        """Checkpoint the run, unless its state is suspect (in a non-finite streak, or non-finite
        weights): such a state is never written, so it can never replace a good checkpoint."""
        if self.nonfinite_in_row or not self._weights_finite():
            if self.runtime.is_main:
                log.warning("step %d: not checkpointed (the last step or the weights are not finite); the "
                            "checkpoints written before stay", self.step)
            return None
        ema = {n: _full(t) for n, t in self.ema.items()} if self.ema is not None else None
        return save_checkpoint(self.run_dir, self.step, self.model, self.optimizer, ema,
                               {"nonfinite_total": self.nonfinite_total, "nonfinite_in_row": self.nonfinite_in_row,
                                "data_position": {"next_sample": self.step * self.config.train.batch_size},
                                "world_size": self.runtime.world_size, "parallel": self.parallel},
                               keep=self.config.train.keep_checkpoints, good_step=self.last_finite_step,
                               only=set(self.trained) if self.config.model.lora is not None else None)

    def _weights_finite(self) -> bool:
        """Every parameter and EMA tensor finite, on every process (FSDP2 holds shards)."""
        tensors = [p.detach() for p in self.model.parameters()] + list((self.ema or {}).values())
        bad = any(not bool(torch.isfinite(_local(t)).all()) for t in tensors)
        return all_reduce_max(1.0 if bad else 0.0) == 0

    def _good_checkpoint_advice(self) -> str:
        """Where to go back to after a non-finite streak: the newest checkpoint written before its first
        step (a checkpoint at the streak's first step holds the weights that produced it)."""
        streak_start = self.step - self.nonfinite_in_row + 1
        good = last_good_checkpoint(self.run_dir, streak_start)
        if good is None:
            return ("No checkpoint was written before these steps: start again with a lower optim.lr, or "
                    "check the data (bad clips?).")
        if self.runtime.is_main:
            point_latest_at(good)
        return (f"The last good checkpoint is {good} (`--resume` now picks it up): resume from it with a "
                "lower optim.lr, or check the data (bad clips?).")

    def export(self, folder: Path) -> Path:
        """The EMA (or current) weights as a checkpoint folder the pipeline loads (CONTRACT2)."""
        weights = self.ema if self.ema is not None else dict(self.model.named_parameters())
        full = {n: _full(t).cpu() for n, t in weights.items()}
        assets = self.config.train.export_assets
        bad = sorted(n for n, t in full.items() if not bool(torch.isfinite(t).all()))
        if bad:
            raise NonFiniteLossError(f"step {self.step}: {len(bad)} weight tensors are not finite ({bad[0]}, ...): "
                                     f"nothing exported to {folder}. {self._good_checkpoint_advice()}")
        if self.runtime.is_main:
            cfg = self.config
            tmp = folder.with_name(f".{folder.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            if cfg.model.lora is not None:  # the adapter, and the config it applies with
                save_adapter(full, cfg.model.lora, tmp / ADAPTER_DIR)
                self.model.save_config(tmp / TRANSFORMER_DIR)
                lora = dict(base=place_asset(self.lora_base(), tmp, folder, "base", assets), adapter=ADAPTER_DIR)
            else:
                with torch.device("meta"):
                    plain = UnityVideoTransformer(**{k: v for k, v in self.model.config.items() if not k.startswith("_")})
                plain.load_state_dict(full, strict=True, assign=True)
                plain.save_pretrained(tmp / TRANSFORMER_DIR, safe_serialization=True)
                lora = {}
            data = cfg.stage_data(cfg.stages[-1])
            tasks = [t for t in TASKS if any(cfg.stage_routing(s).tasks.get(t, 0) > 0 for s in cfg.stages)]
            CheckpointSpec(text_encoder=place_asset(cfg.model.text_encoder, tmp, folder, "text_encoder", assets),
                           codec=cfg.model.codec,
                           codec_folder=place_asset(cfg.model.codec_folder, tmp, folder, "vae", assets),
                           modalities=cfg.modalities, tasks=tasks,
                           frames=data.frames, size=tuple(data.size) if data.size else (0, 0),
                           fps=float(data.world.fps) if data.world else 8.0, shift=cfg.routing.timesteps.shift,
                           modality_prompt_template=cfg.routing.modality_prompt_template,
                           latent_norm=self.latent_norm.to_json(), step=self.step,
                           estimate_mode=cfg.routing.estimate_mode,
                           estimate_caption=cfg.routing.estimate_caption,
                           text_convention=self.text.convention, **lora).save(tmp)
            (tmp / "config.yaml").write_text(dump_config(cfg))
            shutil.rmtree(folder, ignore_errors=True)
            folder.parent.mkdir(parents=True, exist_ok=True)
            tmp.rename(folder)
            log.info("exported step %d to %s", self.step, folder)
        self._barrier()
        return folder


# ----- helpers --------------------------------------------------------------------------------------


# The clean condition of each task, as an item key: swapped with another clip's in validation.
CONDITION_OF = {t: TASK_TABLE[t].condition for t in TASKS if TASK_TABLE[t].condition}
# Steps whose loss is made NaN: a hook for the tests of the non-finite guard (never set in a real run).
POISONED_STEPS: frozenset[int] = frozenset()
LATENT_NORM_FILE = "latent_norm.json"
ADAPTER_DIR = "adapter"


class _StageItems(torch.utils.data.Dataset):
    """Index = (stage index, SampleRef) -> the sample's streams from that stage's clips, and the stage."""

    def __init__(self, stage_clips: list[ClipStreams], config: Config):
        self.stage_clips = stage_clips
        self.config = config

    def __len__(self) -> int:
        return sum(len(c) for c in self.stage_clips)

    def __getitem__(self, key):
        stage_index, ref = key
        return {**self.stage_clips[stage_index][ref], "stage": stage_index}


class _RefBatches:
    """DataLoader batch sampler over StepBatches: lists of (stage index, SampleRef)."""

    def __init__(self, batches: StepBatches):
        self.batches = batches

    def __iter__(self):
        for _step, stage_index, _micro, refs in self.batches:
            yield [(stage_index, ref) for ref in refs]


@dataclass
class _EvalRef:
    clip: int
    route: Route
    number: int = 0


def _full(t: torch.Tensor) -> torch.Tensor:
    """The full tensor of a (possibly FSDP-sharded) tensor; a collective under FSDP."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t.detach()


def _local(t: torch.Tensor) -> torch.Tensor:
    """This process's part of a (possibly FSDP-sharded) tensor; no collective."""
    return t.to_local() if hasattr(t, "to_local") else t


def _copy_full_into(dst: torch.Tensor, full: torch.Tensor) -> None:
    with torch.no_grad():
        if hasattr(dst, "full_tensor"):
            from torch.distributed.tensor import distribute_tensor
            dst.copy_(distribute_tensor(full.to(dst.device_mesh.device_type), dst.device_mesh, dst.placements))
        else:
            dst.copy_(full)


def _grad_norm(model: nn.Module, max_norm: float) -> float:
    """Total gradient norm (clipping to max_norm when > 0); inf/nan when a gradient is not finite."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        return 0.0
    norm = nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    return float(_full(norm))


def _progress(enabled: bool, start: int, total: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="train", unit="step", disable=not enabled, dynamic_ncols=True)
