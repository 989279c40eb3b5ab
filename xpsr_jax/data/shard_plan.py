"""Which items go into which shard, and which shards a host writes: pure arithmetic, shared by every host.

``make-data`` produces ``epochs × num_images`` items. Item ``flat`` is copy ``epoch = flat // num_images`` of image
``index = flat % num_images``; its random draws are seeded by ``(seed, epoch, index)`` alone, so the output does
not depend on how the work is split. Shard ``s`` holds the consecutive items ``[s·size, min((s+1)·size, total))``
and host ``h`` of ``n`` writes the shards ``s ≡ h (mod n)``: every item is written by exactly one host, each host
gets a near-equal share, and a rerun finds its finished shards by name.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class ShardPlan:
    """num_images × epochs items cut into shards of ``shard_size`` (the last one may be shorter)."""

    num_images: int
    epochs: int
    shard_size: int

    def __post_init__(self):
        if self.num_images < 0 or self.epochs < 1 or self.shard_size < 1:
            raise ValueError(f"bad shard plan: {self}")

    @property
    def num_items(self) -> int:
        return self.num_images * self.epochs

    @property
    def num_shards(self) -> int:
        return max(1, math.ceil(self.num_items / self.shard_size))

    def shard_items(self, shard: int) -> range:
        """The flat item numbers of one shard."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range [0, {self.num_shards})")
        start = shard * self.shard_size
        return range(start, min(start + self.shard_size, self.num_items))

    def item(self, flat: int) -> tuple[int, int]:
        """flat item number -> (epoch, image index)."""
        return divmod(flat, self.num_images)

    def host_shards(self, num_hosts: int = 1, host_index: int = 0) -> list[int]:
        """The shards host ``host_index`` of ``num_hosts`` writes."""
        if num_hosts < 1 or not 0 <= host_index < num_hosts:
            raise ValueError(f"host index {host_index} must lie in [0, {num_hosts})")
        return list(range(host_index, self.num_shards, num_hosts))
