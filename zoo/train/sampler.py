"""Data order that is the same for any number of processes and can restart mid-epoch."""

from __future__ import annotations

import itertools
import math
from typing import Iterator, Sequence

import torch
from torch.utils.data import DistributedSampler

MEGA_BATCH = 50
"""Batches whose examples are sorted by length together (as transformers' ``group_by_length``)."""


def length_grouped_order(
    lengths: Sequence[int], batch_size: int, generator: torch.Generator, mega_batch: int = MEGA_BATCH
) -> list[int]:
    """Every index of ``lengths`` once, in batches of ``batch_size`` of similar length.

    A random permutation is cut into mega-batches of ``mega_batch`` batches; each is sorted by
    length (longest first) and cut into batches, and the full batches are then shuffled. So a
    batch is padded only up to its longest item, which is rarely far above its shortest, while
    the data order stays random. A short last batch stays last: the loader cuts the order into
    consecutive batches of ``batch_size``, and a short one in the middle would shift them all.
    """
    count = len(lengths)
    permutation = torch.randperm(count, generator=generator).tolist()
    chunk = batch_size * mega_batch
    batches: list[list[int]] = []
    for start in range(0, count, chunk):
        by_length = sorted(permutation[start : start + chunk], key=lambda index: -lengths[index])  # stable
        batches.extend(by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size))
    short = batches.pop() if batches and len(batches[-1]) < batch_size else None
    order = [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]
    if short is not None:
        order.append(short)
    return list(itertools.chain.from_iterable(order))


class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` that can skip the first ``start`` indices of this rank's share.

    The permutation depends only on ``seed + epoch`` and rank ``r`` of ``R`` takes positions
    ``r, r + R, ...``. So, with each rank's batch being ``B / R`` examples, the union of the
    ranks' k-th batches is exactly the single-process k-th batch of size ``B`` (when the
    dataset size is a multiple of ``R``; otherwise DistributedSampler pads by repeating a few).

    With ``lengths`` (one per example) and the global ``batch_size``, the order is
    :func:`length_grouped_order`'s instead of a plain permutation: the global batches, and so each
    rank's share of them, hold examples of similar length.
    """

    def __init__(
        self,
        dataset_size: int,
        num_replicas: int,
        rank: int,
        seed: int,
        shuffle: bool = True,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> None:
        # a range for a dataset: DistributedSampler only takes its length
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        if lengths is not None:
            if len(lengths) != dataset_size:
                raise ValueError(f"{len(lengths)} lengths for a dataset of {dataset_size} examples")
            if batch_size is None or batch_size <= 0:
                raise ValueError("grouping by length needs the global batch size")
        self.lengths, self.batch_size = lengths, batch_size
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._share(), self.start, None)

    def _share(self) -> Iterator[int]:
        if self.lengths is None or not self.shuffle:
            return super().__iter__()
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = length_grouped_order(self.lengths, self.batch_size or 1, generator)
        padding = self.total_size - len(order)  # as DistributedSampler: repeat the first few
        order += (order * math.ceil(padding / len(order)))[:padding] if padding > 0 else []
        return iter(order[self.rank : self.total_size : self.num_replicas])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)
