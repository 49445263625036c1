"""The calibration pass sharded over the ranks of a torch.distributed job.

Launched by ``torchrun --nproc-per-node N -m lsp_codesign allocate ...`` (or ``allocate
--nproc N``), every rank runs the same command. The calibration images are split into
contiguous runs of whole micro-batches, one run per rank (:meth:`Shard.split`); each rank
runs the forward and backward passes of its own images only. Then:

* the per-sample block sums of every layer are gathered to rank 0 in rank order, which is
  the order of the images in a single-process run (:meth:`Group.gather_rows`);
* the mean-gradient sums (float64) are gathered to rank 0 and added in rank order, so the
  result does not depend on the arrival order (:meth:`Group.sum_in_rank_order`);
* the random seeds of the ``fisher`` and ``ggn`` curvatures come from one generator whose
  draws each rank first replays for the micro-batches before its own, so every image gets
  the seed it would get in a single process.

Rank 0 then has exactly the statistics of a single-process pass (the block sums bit for bit
when each rank runs its micro-batches with the same number of threads as the single process;
the gradient sums to float64 rounding), computes the curves, searches and writes the run; the
other ranks return ``None`` and write nothing.

Before any work the ranks compare what they are about to compute (:meth:`Group.check_same`):
the model's weights, the calibration set as the caller describes it (model, images, seed,
count, data folder), the block, the curvature options and the micro-batch. A difference is
refused on every rank with one message naming the field and each rank's value, instead of
silently mixing two calibration sets. A failure on one rank (a bad label, an empty shard) is
shared the same way (:meth:`Group.agree`), so no rank waits forever for the others.

The process group uses gloo on CPU and NCCL on CUDA. torch is imported inside functions.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping

from ..errors import LspError
from .options import AllocError

__all__ = ["Group", "Shard", "DistributedError", "DEFAULT_TIMEOUT_S", "env_world", "check_plan",
           "run_shard", "gather_collectors"]

# How long a rank waits for the others at one collective: a rank's whole calibration pass runs
# between two of them, so this bounds the difference between the ranks' pass times.
DEFAULT_TIMEOUT_S = 1800.0


class DistributedError(LspError):
    """The ranks disagree (different calibration sets) or one of them failed."""


def env_world() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from the launcher's environment (torchrun sets
    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``), or ``None`` outside a job of two or more."""
    try:
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistributedError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") \
            from None
    if world <= 1:
        return None
    try:
        rank = int(os.environ["RANK"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    except (KeyError, ValueError):
        raise DistributedError("WORLD_SIZE is set but RANK is missing or not a number; launch "
                               "with torchrun (or allocate --nproc N)") from None
    if not 0 <= rank < world:
        raise DistributedError(f"RANK={rank} is outside 0..{world - 1}")
    return rank, world, local


@dataclass
class Group:
    """The ranks of one torch.distributed job (the default process group).

    Attributes
    ----------
    rank, world : int
        This process's rank and the number of ranks.
    device : str
        Where collective buffers live: ``cpu`` (gloo) or ``cuda:N`` (NCCL).
    """

    rank: int
    world: int
    device: str = "cpu"

    @classmethod
    def from_env(cls, device: str = "cpu", *,
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> "Group":
        """Join the job described by the launcher's environment (``env://`` rendezvous).

        ``device`` ``cpu`` uses gloo; ``cuda`` uses NCCL on GPU ``LOCAL_RANK``.
        """
        import torch
        import torch.distributed as dist

        where = env_world()
        if where is None:
            raise DistributedError("not inside a distributed job (WORLD_SIZE is not > 1)")
        rank, world, local = where
        if device.startswith("cuda"):
            if not torch.cuda.is_available():
                raise DistributedError("--device cuda: no CUDA device is available")
            dev = f"cuda:{local % torch.cuda.device_count()}"
            torch.cuda.set_device(dev)
            backend = "nccl"
        else:
            dev, backend = "cpu", "gloo"
        group = cls(rank=rank, world=world, device=dev)
        if not dist.is_initialized():
            with group._collective("joining the process group (MASTER_ADDR "
                                   f"{os.environ.get('MASTER_ADDR')}:"
                                   f"{os.environ.get('MASTER_PORT')})"):
                dist.init_process_group(backend, rank=rank, world_size=world,
                                        timeout=datetime.timedelta(seconds=timeout_s))
        return group

    @staticmethod
    def close() -> None:
        """Leave the process group (if one was joined)."""
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    # ---- collectives ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """A failed collective (a rank that died, a timeout) as one :class:`DistributedError`."""
        try:
            yield
        except (RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise DistributedError(f"rank {self.rank} of {self.world}: {what} failed (did "
                                   f"another rank stop?): {first}") from None

    def _all_ints(self, values: list[int]) -> list[list[int]]:
        import torch
        import torch.distributed as dist

        mine = torch.tensor(values, dtype=torch.int64, device=self.device)
        out = [torch.empty_like(mine) for _ in range(self.world)]
        with self._collective("all_gather"):
            dist.all_gather(out, mine)
        return [t.cpu().tolist() for t in out]

    def all_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's ``data``, in rank order (no pickling)."""
        import torch
        import torch.distributed as dist

        sizes = [v[0] for v in self._all_ints([len(data)])]
        buf = torch.zeros(max(sizes), dtype=torch.uint8)
        if data:
            buf[: len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        buf = buf.to(self.device)
        out = [torch.empty_like(buf) for _ in range(self.world)]
        with self._collective("all_gather"):
            dist.all_gather(out, buf)
        return [bytes(t[:n].cpu().numpy().tobytes()) for t, n in zip(out, sizes)]

    def agree(self, failure: BaseException | None) -> None:
        """Share each rank's failure; raise on every rank if any rank failed.

        Rank 0 raises its own exception if it failed, else one naming the first failed rank
        and its message; the other ranks raise a quiet copy (the command line prints rank 0's
        line only) or their own exception.
        """
        code = 0 if failure is None else int(getattr(failure, "exit_code", 1))
        text = "" if failure is None else f"{code}\0{type(failure).__name__}\0{failure}"
        got = self.all_bytes(text.encode())
        bad = [(r, b.decode(errors="replace").split("\0", 2)) for r, b in enumerate(got) if b]
        if not bad:
            return
        if failure is not None and self.rank == 0:
            raise failure
        r, (code_s, kind, msg) = bad[0]
        err = DistributedError(f"rank {r} of {self.world} failed: {msg}" if r else msg)
        err.exit_code = int(code_s) if code_s.isdigit() else 1
        err.quiet = self.rank != 0
        raise err

    def check_same(self, what: str, plan: Mapping[str, Any]) -> None:
        """Refuse (on every rank) unless every rank passes the same ``plan``.

        The message names the fields that differ and each rank's value.
        """
        mine = json.dumps(plan, sort_keys=True, default=str)
        got = [json.loads(b.decode()) for b in self.all_bytes(mine.encode())]
        diff = sorted({k for p in got for k in set(p) | set(got[0])
                       if p.get(k) != got[0].get(k)})
        if not diff:
            return
        parts = []
        for k in diff[:4]:
            vals = ", ".join(f"rank {r} {p.get(k)!r}" for r, p in enumerate(got))
            parts.append(f"{k}: {vals}")
        err = DistributedError(f"the {self.world} ranks would compute different {what}s "
                               f"({'; '.join(parts)}); every rank must be started with the "
                               "same model, weights, images, seed and options")
        err.quiet = self.rank != 0
        raise err

    def sum_ints(self, values: list[int]) -> list[int]:
        """Element-wise sums over the ranks (exact)."""
        rows = self._all_ints(values)
        return [sum(col) for col in zip(*rows)]

    def gather_rows(self, t: Any) -> Any:
        """Rank 0: the 2-D tensors of all ranks stacked in rank order; other ranks: None."""
        import torch
        import torch.distributed as dist

        rows = [v[0] for v in self._all_ints([int(t.shape[0])])]
        pad = torch.zeros((max(rows), *t.shape[1:]), dtype=t.dtype, device=self.device)
        pad[: t.shape[0]] = t.to(self.device)
        bufs = [torch.empty_like(pad) for _ in range(self.world)] if self.rank == 0 else None
        with self._collective("gathering the block sums"):
            dist.gather(pad, bufs, dst=0)
        if self.rank != 0:
            return None
        return torch.cat([b[:n] for b, n in zip(bufs, rows)]).to(t.device)

    def sum_in_rank_order(self, t: Any) -> Any:
        """Rank 0: the sum of every rank's tensor, added in rank order; other ranks: None."""
        import torch
        import torch.distributed as dist

        src = t.to(self.device).contiguous()
        bufs = [torch.empty_like(src) for _ in range(self.world)] if self.rank == 0 else None
        with self._collective("gathering the gradient sums"):
            dist.gather(src, bufs, dst=0)
        if self.rank != 0:
            return None
        acc = bufs[0].clone()
        for b in bufs[1:]:
            acc += b
        return acc.to(t.device)


@dataclass(frozen=True)
class Shard:
    """One rank's part of the calibration set: whole micro-batches, contiguous.

    Attributes
    ----------
    group : Group
        The job's ranks.
    first, count : int
        Index (in the whole set's order) of this rank's first image, and its image count.
    total : int
        Images of the whole set.
    micro_batch : int
        Images per forward/backward; every rank but the last starts and ends on a multiple.
    plan : dict
        The caller's description of the whole calibration set (model, images, seed, ...):
        the ranks refuse to start unless they all pass the same.
    """

    group: Group
    first: int
    count: int
    total: int
    micro_batch: int
    plan: Mapping[str, Any]

    @classmethod
    def split(cls, group: Group, total: int, micro_batch: int,
              plan: Mapping[str, Any]) -> "Shard":
        """This rank's share of ``total`` images: ``ceil(total / micro_batch)`` micro-batches
        dealt out in contiguous runs, as even as whole micro-batches allow."""
        if total < 1 or micro_batch < 1:
            raise AllocError(f"cannot shard {total} images in micro-batches of {micro_batch}")
        batches = -(-total // micro_batch)
        if batches < group.world:
            raise AllocError(f"{total} calibration images make {batches} micro-batch"
                             f"{'es' if batches > 1 else ''} of {micro_batch}, fewer than the "
                             f"{group.world} ranks; use more images, a smaller --batch-size "
                             "or fewer ranks")
        lo = batches * group.rank // group.world
        hi = batches * (group.rank + 1) // group.world
        first = lo * micro_batch
        return cls(group=group, first=first, count=min(hi * micro_batch, total) - first,
                   total=total, micro_batch=micro_batch, plan=dict(plan))

    @property
    def rank(self) -> int:
        return self.group.rank

    @property
    def world(self) -> int:
        return self.group.world

    def preceding(self) -> list[int]:
        """Sizes of the micro-batches before this shard (whose seeds this rank replays)."""
        return [self.micro_batch] * (self.first // self.micro_batch)


def check_plan(shard: Shard, model: Any, model_name: str, options: Mapping[str, Any],
               block: tuple[int, int], exclude: Iterable[str], micro_batch: int,
               seed: int) -> None:
    """Refuse, on every rank, unless all ranks calibrate the same weights, images (the
    shard's ``plan``), block, options, micro-batch and seed."""
    from ..fingerprint import weights_digest

    if micro_batch != shard.micro_batch:
        raise AllocError(f"micro-batch {micro_batch} differs from the shard's "
                         f"{shard.micro_batch}")
    plan = {**shard.plan, "model": model_name, "weights": weights_digest(model),
            "calibration_images": shard.total, "block": "%dx%d" % block,
            "exclude": sorted(exclude), "micro_batch": micro_batch, "seed": int(seed),
            **options, "ranks": shard.world}
    shard.group.check_same("calibration", plan)


def run_shard(shard: Shard, run: Callable[[], tuple[int, int, int]]) -> tuple[int, int, int]:
    """Run this rank's pass, ``run() -> (images, with labels, without labels)``; share any
    failure (and a shard the loader did not fill) with the other ranks; return the sums of the
    three counts over all ranks."""
    failure = None
    counts = (0, 0, 0)
    try:
        counts = run()
        if counts[0] != shard.count:
            raise AllocError(f"rank {shard.rank}'s loader yielded {counts[0]} images, its shard "
                             f"has {shard.count} (images {shard.first}..."
                             f"{shard.first + shard.count - 1} of {shard.total})")
    except Exception as exc:  # noqa: BLE001 -- shared with the other ranks, then raised
        failure = exc
    shard.group.agree(failure)
    n, with_l, without_l = shard.group.sum_ints(list(counts))
    return n, with_l, without_l


def gather_collectors(shard: Shard, collectors: Iterable[Any]) -> None:
    """Move every collector's block sums (rank order) and gradient sum (added in rank order)
    to rank 0; the other ranks' collectors are emptied."""
    import torch

    g = shard.group
    for c in collectors:
        mine = (torch.cat(c.sums) if c.sums else
                torch.zeros((0, c.grid.n_blocks), dtype=c.weight.dtype))
        rows = g.gather_rows(mine)
        grad = None if c.grad_sum is None else g.sum_in_rank_order(c.grad_sum)
        c.sums, c.grad_sum = ([rows], grad) if g.rank == 0 else ([], None)
