"""Data-parallel recipe runs over several processes (``torchrun``) that train exactly like one process.

``torchrun --nproc_per_node N -m grouppruner compress ...`` starts N processes; each trains on its shard of every
batch. Plain DDP would train a *different* model from a one-process run with the same batch size: BatchNorm
normalises each shard by its own statistics, and the YOLO loss averages over the assigned anchors of the shard,
not of the batch. Here the N processes compute the one-process gradients of the whole batch (to float rounding):

- **data**: every process walks the one-process data stream (the same shuffle, the same augmentation draws) and
  loads only its slice of each batch (:class:`RankShard`), so augmentation is as in a one-process run;
- **BatchNorm**: statistics are summed over the processes in the forward and backward
  (:meth:`Distributed.synchronized_batchnorm`; torch's ``SyncBatchNorm`` runs on CUDA only);
- **losses**: the detection and output-distillation losses are computed on the gathered outputs of the whole
  batch (:meth:`Distributed.gather`); per-image means, such as the attention loss, are combined with
  :meth:`Distributed.batch_mean`; DDP then *sums* the processes' gradients.

Only the first process writes files; every process evaluates (the same numbers), so none waits in a collective.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import Dataset

from .._utils.errors import InvalidOptionError, UsageError

__all__ = ["Distributed", "RankShard"]

logger = logging.getLogger(__name__)


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of every process's input is the sum of the processes' gradients."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor) -> Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class _GatherBatch(torch.autograd.Function):
    """Concatenate every process's ``(n_r, ...)`` shard along dim 0 (shards may differ in length).

    Every process computes the same loss of the gathered batch, so the gradient of its own shard is its slice of
    the gathered gradient, and no communication is needed in the backward.
    """

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, sizes: Sequence[int], rank: int) -> Tensor:
        longest = max(sizes)
        padded = torch.zeros((longest, *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded.contiguous())
        ctx.start, ctx.stop = sum(sizes[:rank]), sum(sizes[: rank + 1])
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        return grad[ctx.start : ctx.stop], None, None


class _SynchronizedBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose training statistics are those of the images of all processes.

    Not constructed: :meth:`Distributed.synchronized_batchnorm` switches the class of existing layers for the
    duration of training, so parameters, buffers and hooks stay the same objects.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not self.training or not dist.is_initialized():
            return super().forward(input)
        x = input if input.dtype == torch.float64 else input.float()  # statistics in fp32 at least
        count = torch.tensor([x.numel() // x.shape[1]], dtype=x.dtype, device=x.device)
        # Two passes (mean, then squared deviations) keep the variance as accurate as a one-process BatchNorm's.
        sums = _AllReduceSum.apply(torch.cat([x.sum(dim=(0, 2, 3)), count]))  # type: ignore[no-untyped-call]
        n = sums[-1].detach()
        mean = sums[:-1] / n
        centred = x - mean[None, :, None, None]
        # d var / d mean is exactly zero; detached, the mean adds no rounding-only term (and no work) to it.
        deviation = x - mean.detach()[None, :, None, None]
        var = _AllReduceSum.apply(deviation.square().sum(dim=(0, 2, 3))) / n  # type: ignore[no-untyped-call]
        tracked = self.num_batches_tracked
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            assert tracked is not None
            with torch.no_grad():
                tracked.add_(1)
                momentum = 1.0 / float(tracked) if self.momentum is None else self.momentum
                unbiased = var * (n / (n - 1)) if n > 1 else var
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                self.running_var.lerp_(unbiased.detach().to(self.running_var.dtype), momentum)
        out: Tensor = centred * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            out = out * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return out.to(input.dtype)


def _sum_gradients(state: object, bucket: Any) -> torch.futures.Future[Tensor]:
    """DDP communication hook: the gradients of the processes summed (DDP's default averages them)."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    assert work is not None
    future: torch.futures.Future[Tensor] = work.get_future().then(lambda fut: fut.value()[0])
    return future


# DDP compares the hook's annotations with the classes themselves; postponed annotations are strings.
_sum_gradients.__annotations__.update(
    {"bucket": dist.GradBucket, "return": torch.futures.Future[Tensor]}  # type: ignore[attr-defined]
)


class Distributed:
    """The processes of one run: this process's ``rank`` among ``world_size``, and the collectives the recipe needs.

    ``Distributed()`` is a single process: every method is then the identity or a no-op, so the recipe has one
    code path.

    Args:
        rank: this process's index in ``[0, world_size)``.
        world_size: number of processes (the process group must be initialised when it is above 1).
        device: the device of this process (for DDP's ``device_ids`` on CUDA).
    """

    def __init__(self, rank: int = 0, world_size: int = 1, device: torch.device | None = None) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise InvalidOptionError(f"Distributed: rank {rank} is not in [0, {world_size})")
        if world_size > 1 and not dist.is_initialized():
            raise UsageError("Distributed: world_size > 1 needs an initialised torch.distributed process group")
        self.rank, self.world_size = rank, world_size
        self.device = device or torch.device("cpu")

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        """The processes ``torchrun`` started (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``), or a single process.

        Initialises the process group when needed: NCCL for CUDA, gloo otherwise. On CUDA, process ``LOCAL_RANK``
        uses GPU ``LOCAL_RANK``.

        Raises:
            ValueError: ``WORLD_SIZE`` / ``RANK`` / ``LOCAL_RANK`` are not integers.
        """
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        except ValueError as error:
            raise InvalidOptionError(
                f"torchrun environment: WORLD_SIZE, RANK and LOCAL_RANK must be integers ({error})"
            ) from error
        if world_size == 1:
            return cls(device=device)
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        logger.info("process %d of %d on %s", rank, world_size, device)
        return cls(rank, world_size, device)

    @property
    def active(self) -> bool:
        """More than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """The process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every process gets here (e.g. until the main process has written a file)."""
        if self.active:
            dist.barrier()

    def shard(self, size: int) -> slice:
        """This process's slice of a batch of ``size`` images: contiguous, lengths differing by at most one."""
        return slice(self.rank * size // self.world_size, (self.rank + 1) * size // self.world_size)

    def _sizes(self, size: int, device: torch.device) -> list[int]:
        sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(self.world_size)]
        dist.all_gather(sizes, torch.tensor([size], dtype=torch.int64, device=device))
        return [int(s) for s in sizes]

    def gather(self, tensor: Tensor) -> Tensor:
        """The whole batch from every process's shard: ``(n_r, ...) -> (sum_r n_r, ...)`` in rank order.

        Differentiable: a loss of the gathered batch, computed alike by every process, back-propagates into each
        process's own shard.
        """
        if not self.active:
            return tensor
        return self._gather(tensor, self._sizes(tensor.shape[0], tensor.device))

    def _gather(self, tensor: Tensor, sizes: Sequence[int]) -> Tensor:
        gathered: Tensor = _GatherBatch.apply(tensor, sizes, self.rank)  # type: ignore[no-untyped-call]
        return gathered

    def gather_outputs(self, outputs: Sequence[Tensor]) -> list[Tensor]:
        """:meth:`gather` of each head map ``(n_r, C_i, H_i, W_i)`` (the shard sizes are exchanged once)."""
        if not self.active or not outputs:
            return list(outputs)
        sizes = self._sizes(outputs[0].shape[0], outputs[0].device)
        return [self._gather(output, sizes) for output in outputs]

    def gather_targets(self, targets: Sequence[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """The target dicts of the whole batch, in rank order (as in :meth:`gather`)."""
        if not self.active:
            return list(targets)
        parts: list[list[dict[str, Tensor]] | None] = [None] * self.world_size
        dist.all_gather_object(parts, [{k: v.cpu() for k, v in t.items()} for t in targets])
        device = self.device
        return [{k: v.to(device) for k, v in t.items()} for part in parts for t in part or []]

    def batch_mean(self, mean: Tensor, size: int) -> Tensor:
        """The whole batch's mean of a per-image mean ``mean`` (a scalar over this process's ``size`` images).

        Its value is the whole-batch mean on every process; its gradient is this process's share
        ``size / total`` of it, so that the summed gradients of the processes are the whole batch's.
        """
        if not self.active:
            return mean
        share = mean * (size / sum(self._sizes(size, mean.device)))
        total = share.detach().clone()
        dist.all_reduce(total)
        return share + (total - share.detach())

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` in DistributedDataParallel with summed gradients (see the module docstring), or itself."""
        if not self.active:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel(module, device_ids=ids)
        ddp.register_comm_hook(None, _sum_gradients)
        return ddp

    @contextmanager
    def synchronized_batchnorm(self, model: nn.Module) -> Iterator[None]:
        """Within the block, the model's ``BatchNorm2d`` layers normalise by the statistics of all processes."""
        if not self.active:
            yield
            return
        layers = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
        for layer in layers:
            layer.__class__ = _SynchronizedBatchNorm2d
        try:
            yield
        finally:
            for layer in layers:
                layer.__class__ = nn.BatchNorm2d

    def check_same(self, value: object, what: str) -> None:
        """Raise unless every process has an equal ``value`` (e.g. a pruning plan: each process makes its own).

        Raises:
            RuntimeError: the processes disagree; the message names ``what``.
        """
        if not self.active:
            return
        values: list[object] = [None] * self.world_size
        dist.all_gather_object(values, value)
        if any(v != values[0] for v in values):
            raise UsageError(f"the {self.world_size} processes disagree on {what}; they must compute it alike")


class RankShard(Dataset[Any]):
    """One process's view of a dataset: of every batch of indices, it loads only its :meth:`Distributed.shard`.

    The other items are skipped with ``dataset.skip(index)`` when the dataset has it (it must draw the same
    random numbers as loading the item, as :meth:`~grouppruner.detection.VOCDetection.skip` does), else loaded
    and dropped; so the augmentation of every image is that of a one-process run with the same generator.
    Use it with a ``DataLoader`` built exactly like the one-process loader (same length, batch size, shuffle and
    generator).

    Args:
        dataset: the map-style dataset of the one-process run.
        distributed: this process.
    """

    def __init__(self, dataset: Dataset[Any], distributed: Distributed) -> None:
        self.dataset, self.distributed = dataset, distributed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        return self.dataset[index]

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        mine = range(len(indices))[self.distributed.shard(len(indices))]
        skip = getattr(self.dataset, "skip", None)
        items = []
        for position, index in enumerate(indices):
            if position in mine:
                items.append(self.dataset[index])
            elif callable(skip):
                skip(index)
            else:
                self.dataset[index]
        return items
