"""Many processes for distill: torch.distributed from the launcher's environment, DDP or FSDP, rank-0 I/O.

torchrun, ``accelerate launch`` and SLURM ``srun`` around torchrun start one process per GPU and set RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; with WORLD_SIZE > 1, ``launch`` starts the process group
from them (NCCL on GPUs, gloo on the CPU) and gives each process its GPU ``cuda:LOCAL_RANK``. Nothing here
schedules work: the launcher starts the processes, the data order decides who reads what
(``pipeline.student.cache_stream``).

Rank 0 alone reads and writes the output directory. What the other ranks need from it (the resume decision,
the checkpoint's weights and optimizer state) is broadcast, and a checkpoint holds the full, unsharded model
and optimizer state keyed by parameter name, so it resumes under any number of processes and either wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.nn.parallel import DistributedDataParallel

from cache_schema import CacheError
from pipeline.config import ConfigError
from pipeline.errors import ModelError
from pipeline.models import pick_device

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among the launched ones (rank 0 of 1 without a launcher)."""

    device: torch.device
    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


@contextlib.contextmanager
def launch(device: str) -> Iterator[World]:
    """The world of this process; with WORLD_SIZE > 1, a process group for the duration of the block."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield World(pick_device(device))
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={size} but {', '.join(missing)} not set: start the processes with torchrun or accelerate"
        )
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    chosen = pick_device(device)
    if chosen.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {local_rank}: this node has {torch.cuda.device_count()} CUDA devices")
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    with process_group(backend, device_id=chosen if chosen.type == "cuda" else None):
        world = World(chosen, dist.get_rank(), dist.get_world_size())
        if rank != world.rank:
            raise ConfigError(f"RANK={rank} but the process group says rank {world.rank}")
        if not world.main:  # one voice: the other ranks log warnings and errors only
            logging.getLogger().setLevel(logging.WARNING)
        yield world


@contextlib.contextmanager
def process_group(
    backend: str, *, timeout: timedelta | None = None, device_id: torch.device | None = None
) -> Iterator[None]:
    """A process group from the launcher's environment for the block; a caller's own group is used and left alone.

    ``timeout``: how long collectives (a barrier) wait; None keeps torch's default.
    """
    owned = not dist.is_initialized()
    if owned:
        options = {"timeout": timeout} if timeout is not None else {}
        dist.init_process_group(backend, device_id=device_id, **options)
    try:
        yield
    finally:
        if owned:
            dist.destroy_process_group()


def on_main(world: World, fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 and its result on every rank; a user error it raises is raised on every rank."""
    if not world.distributed:
        return fn()
    box: list[Any] = [None]
    if world.main:
        try:
            box[0] = ("ok", fn())
        except (ConfigError, CacheError, ModelError) as e:  # the user's mistake: every rank says so and stops
            box[0] = ("error", e)
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def sum_over_ranks(world: World, values: list[float]) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (the values themselves with one process)."""
    if not world.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=world.device)
    dist.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------------- wrapping


def wrap(model: torch.nn.Module, world: World, parallel: str) -> torch.nn.Module:
    """The model ready to train on ``world``: as is on one process, else DDP or FSDP (per transformer block).

    Every rank loaded weights itself; rank 0's are the ones that count (a resumed run's checkpoint), so they are
    broadcast first: DDP does that on construction, FSDP gets them before sharding.
    """
    if not world.distributed:
        return model.to(world.device)
    if parallel == "ddp":
        model.to(world.device)
        return DistributedDataParallel(model, device_ids=[world.device] if world.device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    _broadcast_weights(model, world)
    mesh = init_device_mesh(world.device.type, (world.size,))
    blocks = set(getattr(model, "_no_split_modules", None) or ())  # the transformer block class of HF models
    for module in model.modules():
        if type(module).__name__ in blocks:
            fully_shard(module, mesh=mesh)
    fully_shard(model, mesh=mesh)  # the rest (embeddings, final norm, tied head) as one group; moves to device
    return model


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The Hugging Face model inside (FSDP shards it in place, so that is the model itself)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _broadcast_weights(model: torch.nn.Module, world: World) -> None:
    for tensor in model.state_dict().values():  # tied weights appear twice; broadcasting twice is harmless
        staged = tensor.to(world.device)  # NCCL sends from the GPU; one tensor at a time bounds the memory
        dist.broadcast(staged, src=0)
        tensor.copy_(staged)


@contextlib.contextmanager
def gradient_sync(model: torch.nn.Module, enabled: bool) -> Iterator[None]:
    """Accumulate locally (``enabled=False``) or reduce the gradients over ranks in this backward pass."""
    if isinstance(model, DistributedDataParallel) and not enabled:
        with model.no_sync():
            yield
        return
    if hasattr(model, "set_requires_gradient_sync"):  # an FSDP-sharded model
        model.set_requires_gradient_sync(enabled)
    yield


def grad_norm_value(norm: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a float (a replicated DTensor under FSDP)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


# ---------------------------------------------------------------------------------------------- state


_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def full_model_state(model: torch.nn.Module) -> dict:
    """The unsharded weights on the CPU, keyed by parameter name, on rank 0 (empty elsewhere).

    Collective under FSDP (the shards are gathered): every rank calls it.
    """
    return get_model_state_dict(model, options=_FULL)


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The unsharded optimizer state on the CPU, keyed by parameter name, on rank 0 (empty elsewhere); collective."""
    return get_optimizer_state_dict(model, optimizer, options=_FULL)


def load_optimizer_state(world: World, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load ``full_state``'s optimizer state, given on rank 0 (``{}`` elsewhere), into every rank's optimizer."""
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=world.distributed)
    set_optimizer_state_dict(model, optimizer, state, options=options)
