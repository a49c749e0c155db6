"""Processes, devices and parallelism, applied to a plain model from outside (torchtitan's way).

- one process, or torchrun with DDP (small models) or FSDP2 `fully_shard` (large ones);
- activation checkpointing through the model's own block loop (diffusers' gradient checkpointing);
- bf16 on GPU: autocast under DDP, FSDP2's MixedPrecisionPolicy (bf16 compute, fp32 reductions).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

from ..models.transformer import UnityVideoTransformer


@dataclass
class Runtime:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_runtime() -> Runtime:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device if device.type == "cuda" else None)
    return Runtime(rank, world_size, local_rank, device)


def shutdown(runtime: Runtime) -> None:
    if dist.is_initialized():
        dist.barrier()  # without it gloo sometimes aborts at exit after the work is done (ENVIRONMENT.md)
        dist.destroy_process_group()


def choose_parallel(mode: str, runtime: Runtime, num_params: int, fsdp_min_params: int) -> str:
    """none | ddp | fsdp. `auto`: FSDP2 for big models on GPU, DDP otherwise, none for one process."""
    if runtime.world_size == 1:
        return "none"
    if mode == "none":
        raise ValueError("train.parallel=none but the run has several processes; use ddp or fsdp")
    if mode == "auto":
        return "fsdp" if num_params >= fsdp_min_params and runtime.device.type == "cuda" else "ddp"
    return mode


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return torch.bfloat16 if precision == "bf16" else torch.float32


class RoutedModel(nn.Module):
    """One forward for all routing groups of a micro-batch (one model call per group).

    DDP and FSDP2 expect one forward per backward, so the group loop lives inside this forward. Every
    modality expert is touched with a zero-weight term, so each parameter gets a gradient on every
    process in every step (tensor of zeros for an expert no sample used): DDP needs no
    find_unused_parameters and FSDP2's reduce-scatters line up across processes.
    """

    def __init__(self, model: UnityVideoTransformer):
        super().__init__()
        self.model = model

    def forward(self, groups: list[list], calls: int = 0) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
        """Outputs of each group, and a zero scalar to add to the loss.

        calls: run the model at least this many times (FSDP2: every process must make the same
        sequence of calls, and processes can get different numbers of groups); the extra calls repeat
        the first group and enter the loss with weight 0.
        """
        outputs = [self.model(streams) for streams in groups]
        padding = [self.model(groups[0]) for _ in range(calls - len(groups))]
        experts = [p for m in (self.model.patch_embedders, self.model.heads) for p in m.parameters()]
        touch = sum((p.flatten()[0].float() for p in experts), torch.zeros((), device=outputs[0][0].device))
        touch = touch + sum((v.float().mean() for out in padding for v in out), torch.zeros_like(touch))
        return outputs, touch * 0.0


def apply_parallel(model: UnityVideoTransformer, mode: str, runtime: Runtime, dtype: torch.dtype,
                   activation_checkpointing: bool, compile_blocks: bool = False) -> nn.Module:
    """Wrap the model for training; returns the module to call (the model itself stays reachable
    as `.module.model` under DDP, `.model` otherwise). Checkpointing and compilation are applied here,
    from outside the model (train.activation_checkpointing, train.compile)."""
    if activation_checkpointing:
        model.enable_gradient_checkpointing()
    if compile_blocks:
        model.compile_blocks()
    routed = RoutedModel(model)
    if mode == "fsdp":
        return apply_fsdp(routed, dtype)
    routed.to(runtime.device)
    if mode == "ddp":
        return nn.parallel.DistributedDataParallel(
            routed, device_ids=[runtime.device.index] if runtime.device.type == "cuda" else None)
    return routed


def apply_fsdp(routed: RoutedModel, dtype: torch.dtype) -> nn.Module:
    """FSDP2: shard each block's attention, cross-attention and FFN as their own units, then the rest.

    UnityVideo runs a block through `stream_block(block, ...)` (per-stream modulation), which calls the
    block's sub-modules rather than `block.forward`; FSDP2 hooks module calls, so the units are the
    sub-modules that are called. The block's small modulation table stays in the root unit.
    """
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    routed.to(device)
    for block in routed.model.backbone.blocks:
        for unit in (block.attn1, block.attn2, block.ffn):
            fully_shard(unit, mp_policy=policy)
    fully_shard(routed, mp_policy=policy)
    return routed


def inner_model(wrapped: nn.Module) -> UnityVideoTransformer:
    module = wrapped.module if isinstance(wrapped, nn.parallel.DistributedDataParallel) else wrapped
    return module.model


def _all_reduce(values: torch.Tensor, op) -> torch.Tensor:
    """All-reduce a small CPU tensor in place (through the GPU under NCCL, which has no CPU tensors)."""
    if not dist.is_initialized():
        return values
    if dist.get_backend() == "nccl":
        buffer = values.cuda()
        dist.all_reduce(buffer, op=op)
        values.copy_(buffer.cpu())
    else:
        dist.all_reduce(values, op=op)
    return values


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    return _all_reduce(values, dist.ReduceOp.SUM)


def all_reduce_max_tensor(values: torch.Tensor) -> torch.Tensor:
    return _all_reduce(values, dist.ReduceOp.MAX)


def all_reduce_max(value: float) -> float:
    return float(_all_reduce(torch.tensor([value], dtype=torch.float64), dist.ReduceOp.MAX))
