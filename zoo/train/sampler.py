"""Data order that is the same for any number of processes and can restart mid-epoch."""

from __future__ import annotations

import itertools
import math
from typing import Iterator

from torch.utils.data import DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """:class:`DistributedSampler` that can skip the first ``start`` indices of this rank's share.

    The permutation depends only on ``seed + epoch`` and rank ``r`` of ``R`` takes positions
    ``r, r + R, ...``. So, with each rank's batch being ``B / R`` examples, the union of the
    ranks' k-th batches is exactly the single-process k-th batch of size ``B`` (when the
    dataset size is a multiple of ``R``; otherwise DistributedSampler pads by repeating a few).
    """

    def __init__(self, dataset_size: int, num_replicas: int, rank: int, seed: int, shuffle: bool = True) -> None:
        # a range for a dataset: DistributedSampler only takes its length
        super().__init__(range(dataset_size), num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)  # type: ignore[arg-type]
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(super().__iter__(), self.start, None)

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)

    def batches_per_epoch(self, batch_size: int) -> int:
        return math.ceil(self.num_samples / batch_size)
