"""Cloud TPU slice names (``v5p-64``, ``v5e-8``, ``v6e-8``, ``v4-8``) -> compile-only devices of that slice.

No TPU is needed: with libtpu installed, ``jax.experimental.topologies.get_topology_desc`` builds the devices of a
slice that the TPU compiler can target from any host, so a program's per-chip memory is known before a pod is
rented. Names follow the accelerator types Cloud TPU sells: v4 and v5p count TensorCores (two per chip, fused into
one "megacore" device), v5e (also spelt ``v5litepod``) and v6e count chips.
"""

from __future__ import annotations

import dataclasses
import math
import re

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str  # as in accelerator names: v4, v5p, v5e, v6e
    topology_prefix: str  # as get_topology_desc spells it
    dims: int  # 3 (torus of chips) or 2
    cores_per_chip_in_name: int  # v4-8 / v5p-8 are 4 chips: the name counts TensorCores
    hbm_bytes: int  # usable HBM per chip as the TPU compiler reports it ("exceeds available HBM (X)")
    peak_tflops: float  # dense bf16 per chip, for MFU
    chip_config_name: str | None  # "megacore": one device per chip, as JAX sees a real slice


GENERATIONS = {
    "v4": Generation("v4", "v4", 3, 2, int(30.75 * GIB), 275.0, "megacore"),
    "v5p": Generation("v5p", "v5p", 3, 2, int(95.74 * GIB), 459.0, "megacore"),
    "v5e": Generation("v5e", "v5e", 2, 1, int(15.75 * GIB), 197.0, None),
    "v6e": Generation("v6e", "v6e", 2, 1, int(31.25 * GIB), 918.0, None),
}
ALIASES = {"v5litepod": "v5e", "v5lite": "v5e", "v6": "v6e", "v5": "v5p"}


@dataclasses.dataclass(frozen=True)
class Topology:
    """One TPU slice: ``v5p-64`` -> 32 chips laid out 2x4x4."""

    name: str  # normalised accelerator name, e.g. "v5p-64"
    generation: Generation
    chips: int
    grid: tuple[int, ...]  # chips along each torus axis

    @property
    def topology_name(self) -> str:
        return f"{self.generation.topology_prefix}:{'x'.join(map(str, self.grid))}"

    @property
    def hbm_bytes(self) -> int:
        return self.generation.hbm_bytes

    def describe_kwargs(self) -> dict:
        """Arguments of ``get_topology_desc`` for this slice."""
        kw = {"platform": "tpu", "topology_name": self.topology_name}
        if self.generation.chip_config_name:
            kw["chip_config_name"] = self.generation.chip_config_name
        if self.chips == 1:  # the default host (2x2x1 chips) does not divide a one-chip slice
            kw["chips_per_host_bounds"] = (1, 1, 1)
        return kw

    def devices(self) -> list:
        """The slice's compile-only devices (one per chip). Needs libtpu; raises a RuntimeError naming it."""
        from jax.experimental import topologies

        try:
            desc = topologies.get_topology_desc(**self.describe_kwargs())
        except RuntimeError as e:
            if "not installed" in str(e):
                raise RuntimeError(f"planning for {self.name} needs the TPU compiler: pip install "
                                   f"'jax[tpu]' at this JAX's version (brings libtpu) ({e})") from e
            raise
        devices = list(desc.devices)
        if len(devices) != self.chips:
            raise RuntimeError(f"{self.topology_name} gave {len(devices)} devices, expected {self.chips} chips")
        return devices


def chip_grid(chips: int, dims: int) -> tuple[int, ...]:
    """The slice shapes Cloud TPU builds: 4 chips 2x2(x1), then doubling the last of the smallest axes
    (v5p: 8 -> 2x2x2, 16 -> 2x2x4, 32 -> 2x4x4, 64 -> 4x4x4; v5e: 8 -> 2x4, 16 -> 4x4, 32 -> 4x8)."""
    if chips == 1:
        return (1,) * dims
    if chips < 4 or chips & (chips - 1):
        raise ValueError(f"{chips} chips: slices have 1 or a power of two >= 4 chips")
    grid = [2, 2] + [1] * (dims - 2)
    while math.prod(grid) < chips:
        smallest = min(grid)
        last = max(i for i, g in enumerate(grid) if g == smallest)
        grid[last] *= 2
    return tuple(grid)


def parse(name: str) -> Topology:
    """``v5p-64`` / ``v5litepod-8`` / ``v6e-8`` / ``v4-8`` -> Topology; a ValueError names the accepted forms."""
    m = re.fullmatch(r"\s*(v\d+[a-z]*)-(\d+)\s*", name.lower())
    if not m:
        raise ValueError(f"TPU topology {name!r}: expected an accelerator type such as v4-8, v5e-8 (v5litepod-8), "
                         f"v5p-64 or v6e-8")
    gen_name, count = ALIASES.get(m.group(1), m.group(1)), int(m.group(2))
    if gen_name not in GENERATIONS:
        raise ValueError(f"TPU topology {name!r}: unknown generation {m.group(1)!r}; known: "
                         f"{', '.join(GENERATIONS)} (and v5litepod)")
    gen = GENERATIONS[gen_name]
    if count % gen.cores_per_chip_in_name:
        raise ValueError(f"{name}: {gen_name} names count TensorCores, two per chip (e.g. {gen_name}-8 = 4 chips)")
    chips = count // gen.cores_per_chip_in_name
    if gen.cores_per_chip_in_name > 1 and chips < 4:
        raise ValueError(f"{name}: the smallest {gen_name} slice is {gen_name}-8 (4 chips)")
    try:
        grid = chip_grid(chips, gen.dims)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return Topology(f"{gen_name}-{count}", gen, chips, grid)
