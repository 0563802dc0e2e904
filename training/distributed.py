"""Multi-process training context for `torchrun` (PyTorch DistributedDataParallel).

`torchrun --nproc_per_node N -m training scene ...` sets RANK, WORLD_SIZE and LOCAL_RANK; this
module reads them, initialises the process group (nccl on CUDA, gloo on CPU) and says who may
write files (rank 0 only). Without those variables everything runs as a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device('cpu')

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the one process that writes checkpoints, logs, previews and artifacts."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast_object(self, obj):
        """rank 0's `obj` on every rank (for decisions all ranks must share)."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather_objects(self, obj) -> list:
        """[obj of rank 0, obj of rank 1, ...] on every rank."""
        if not self.distributed:
            return [obj]
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' → this process's GPU if CUDA is available, else CPU; otherwise torch.device(name)."""
    if name == 'auto':
        return torch.device(f'cuda:{local_rank}') if torch.cuda.is_available() else torch.device('cpu')
    dev = torch.device(name)
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise RuntimeError(f'runtime.device is {name!r} but CUDA is not available in this torch build '
                               f'({torch.__version__}); use runtime.device=cpu or install a CUDA build of torch')
        if dev.index is None:
            dev = torch.device(f'cuda:{local_rank}')
    return dev


def init_distributed(device: str = 'auto') -> DistContext:
    """Read the torchrun environment and initialise the process group when WORLD_SIZE > 1."""
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    dev = resolve_device(device, local_rank)
    if world > 1:
        if 'MASTER_ADDR' not in os.environ:
            raise RuntimeError('WORLD_SIZE > 1 but MASTER_ADDR is not set; launch multi-process training with '
                               '`torchrun --nproc_per_node N -m training ...`')
        if dev.type == 'cuda':
            torch.cuda.set_device(dev)
        backend = 'nccl' if dev.type == 'cuda' else 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
