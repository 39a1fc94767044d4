"""How a global batch is split into one shard per rank (the one rule every part uses).

A global batch of ``n`` samples is cut into ``size`` contiguous shards in rank
order; when ``n`` does not divide, the first ``n % size`` ranks get one sample
more (so shards differ by at most one and may be empty when ``n < size``).
The DataLoader requires its *batch size* to divide by the number of ranks, so
only an epoch's last, shorter batch can be split unevenly; ``fit`` weights each
rank's gradient by its share of the samples, which makes the update equal to
one process's on that batch too.
"""
from __future__ import annotations

__all__ = ["shard_bounds"]


def shard_bounds(n: int, size: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s shard of ``n`` samples split over ``size`` ranks."""
    if size < 1 or not 0 <= rank < size:
        raise ValueError(f"shard_bounds: need 0 <= rank < size, got rank {rank}, size {size}")
    base, extra = divmod(int(n), size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
