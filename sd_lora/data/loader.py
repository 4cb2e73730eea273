"""Batches drawn from one bucket at a time, sharded across processes, the same for any worker count."""

from __future__ import annotations

import math
import random
from collections import defaultdict

import torch

from sd_lora.data.buckets import Size
from sd_lora.data.dataset import ImageCaptionDataset, collate_samples

__all__ = ["BucketBatchSampler", "BucketDataLoader", "build_dataloader", "count_batches", "loader_options"]


def count_batches(bucket_sizes: list[int], batch_size: int, num_processes: int = 1) -> int:
    """Batches one process sees per epoch, given the number of samples in each bucket."""
    total = sum(math.ceil(n / batch_size) for n in bucket_sizes if n)
    return math.ceil(total / num_processes)


class BucketBatchSampler(torch.utils.data.Sampler):
    """Yields lists of `(entry index, epoch)`: every batch from one bucket, batches in seeded random order.

    A bucket's last batch may be smaller than batch_size. With several processes the epoch's batch list is
    padded (by repeating its first batches) to a multiple of the process count and dealt out round-robin,
    so every process runs the same number of steps.
    """

    def __init__(self, entry_buckets: list[Size], batch_size: int, seed: int, shuffle: bool = True,
                 num_processes: int = 1, process_index: int = 0):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if not 0 <= process_index < num_processes:
            raise ValueError(f"process_index {process_index} out of range for {num_processes} processes")
        self.entry_buckets, self.batch_size, self.seed, self.shuffle = entry_buckets, batch_size, seed, shuffle
        self.num_processes, self.process_index = num_processes, process_index
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All processes' batches of `epoch`, before sharding."""
        groups: dict[Size, list[int]] = defaultdict(list)
        for idx, bucket in enumerate(self.entry_buckets):
            groups[bucket].append(idx)
        rng = random.Random(f"batches:{self.seed}:{epoch}")
        batches = []
        for bucket in sorted(groups):
            idxs = groups[bucket]
            if self.shuffle:
                rng.shuffle(idxs)
            batches += [idxs[i:i + self.batch_size] for i in range(0, len(idxs), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1  # a loop that never calls set_epoch still gets a new order each epoch
        batches = self.epoch_batches(epoch)
        if batches and len(batches) % self.num_processes:
            batches += batches[: self.num_processes - len(batches) % self.num_processes]
        for batch in batches[self.process_index::self.num_processes]:
            yield [(idx, epoch) for idx in batch]

    def __len__(self) -> int:
        sizes = defaultdict(int)
        for bucket in self.entry_buckets:
            sizes[bucket] += 1
        return count_batches(list(sizes.values()), self.batch_size, self.num_processes)


class BucketDataLoader(torch.utils.data.DataLoader):
    """A DataLoader whose `set_epoch(e)` reaches its bucket batch sampler."""

    def set_epoch(self, epoch: int) -> None:
        self.batch_sampler.set_epoch(epoch)


def loader_options(cfg, device) -> dict:
    """build_dataloader's pin_memory / prefetch_factor from data.pin_memory ('auto': on for CUDA) and
    data.prefetch_factor."""
    pin = cfg.pin_memory if cfg.pin_memory != "auto" else torch.device(device).type == "cuda"
    return {"pin_memory": bool(pin), "prefetch_factor": cfg.prefetch_factor}


def build_dataloader(dataset: ImageCaptionDataset, batch_size: int, seed: int, num_workers: int = 0,
                     num_processes: int = 1, process_index: int = 0, shuffle: bool | None = None,
                     pin_memory: bool = False, prefetch_factor: int | None = None) -> BucketDataLoader:
    """Bucketed, sharded batches. `shuffle` defaults to True for a training set, False for validation.
    `pin_memory` page-locks batches (faster copies to a GPU); `prefetch_factor` batches per worker ahead."""
    sampler = BucketBatchSampler(dataset.entry_buckets(), batch_size, seed,
                                 shuffle=dataset.train if shuffle is None else shuffle,
                                 num_processes=num_processes, process_index=process_index)
    extra = {"prefetch_factor": prefetch_factor} if num_workers > 0 and prefetch_factor else {}
    # The loader's own generator: each iteration draws its worker base seed from it, which would otherwise come
    # from torch's global generator and shift adapter dropout by one draw after a mid-epoch resume (samples take
    # their randomness from (seed, epoch, index), so this seed decides nothing else).
    return BucketDataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, collate_fn=collate_samples,
                            persistent_workers=num_workers > 0, pin_memory=pin_memory,
                            generator=torch.Generator().manual_seed(seed), **extra)
