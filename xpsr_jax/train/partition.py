"""Meshes, shardings and the trainable/frozen split — everything that maps the model onto devices.

Model code only names logical axes (``xpsr_jax/nn/axes.py``); the config says which mesh axis each name uses. A
dimension that the mesh axis does not divide (a 4-channel DFC head on an 8-way ``fsdp`` axis) stays replicated.
"""

from __future__ import annotations

import re
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P


def make_mesh(shape: Sequence[tuple[str, int]], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """``(("data", -1), ("fsdp", 2))`` -> a Mesh; one -1 takes the devices left over."""
    devices = list(devices if devices is not None else jax.devices())
    names = tuple(n for n, _ in shape)
    sizes = [int(s) for _, s in shape]
    known = int(np.prod([s for s in sizes if s != -1]))
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh shape {shape}: at most one axis may be -1")
    if -1 in sizes:
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh shape {dict(zip(names, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"have {len(devices)}")
    try:
        grid = mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # noqa: BLE001 - CPU and odd topologies: a plain reshape is a valid (if unoptimised) mesh
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, names)


# Parameters smaller than this stay replicated: sharding a 4-channel head saves nothing and makes the partitioner
# gather its gradients' operands (XLA warns "involuntary full rematerialization").
MIN_SHARDED_SIZE = 1 << 14


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> Any:
    """Logical partition specs of a boxed abstract tree -> NamedShardings, replicating indivisible dims and
    parameters under ``MIN_SHARDED_SIZE`` elements."""
    logical = nn.get_partition_spec(boxed_abstract)
    shapes = nn.unbox(boxed_abstract)

    def one(spec, leaf):
        if spec is None or int(np.prod(leaf.shape)) < MIN_SHARDED_SIZE:
            return NamedSharding(mesh, P())
        mesh_spec = nn.logical_to_mesh_axes(spec, rules)
        return NamedSharding(mesh, _divisible(mesh_spec, leaf.shape, mesh))

    return jax.tree.map(one, logical, shapes, is_leaf=lambda x: isinstance(x, P) or x is None)


def _divisible(spec: P, shape: tuple[int, ...], mesh: Mesh) -> P:
    out = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
        out.append(axes if names and dim % size == 0 else None)
    return P(*out)


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]], ndim: int = 4) -> NamedSharding:
    """Leading (batch) axis over the data-parallel mesh axes named by the rule for ``batch``."""
    axes = dict(rules).get("batch")
    return NamedSharding(mesh, P(axes, *([None] * (ndim - 1))))


def data_parallel_size(mesh: Mesh, rules: Sequence[tuple[str, Any]]) -> int:
    axes = dict(rules).get("batch")
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in names])) if names else 1


# --- trainable / frozen ------------------------------------------------------------------------------------------
def path_str(path: tuple[str, ...]) -> str:
    return "/".join(path)


def trainable_mask(params: Mapping[str, Any], patterns: Sequence[str]) -> dict[str, Any]:
    """Tree of bools: True where the parameter path fully matches one of ``patterns``."""
    compiled = [re.compile(p) for p in patterns]
    flat = flatten_dict(params)
    return unflatten_dict({p: any(c.fullmatch(path_str(p)) for c in compiled) for p in flat})


def split(params: Mapping[str, Any], mask: Mapping[str, Any]) -> tuple[dict, dict]:
    """-> (trainable, frozen), two disjoint trees whose union is ``params``."""
    flat, flat_mask = flatten_dict(params), flatten_dict(mask)
    train = {p: v for p, v in flat.items() if flat_mask[p]}
    frozen = {p: v for p, v in flat.items() if not flat_mask[p]}
    return unflatten_dict(train), unflatten_dict(frozen)


def merge(trainable: Mapping[str, Any], frozen: Mapping[str, Any]) -> dict[str, Any]:
    both = flatten_dict(frozen)
    both.update(flatten_dict(trainable))
    return unflatten_dict(both)


def host_to_global(tree: Any, shardings: Any) -> Any:
    """Host NumPy arrays that are identical on every process -> global arrays; each device takes its slice
    (so a process never uploads what its devices do not hold)."""
    def one(a, s):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, s, lambda idx: a[idx])

    return jax.tree.map(one, tree, shardings)


def barrier(name: str, timeout_s: int = 3600) -> None:
    """Wait until every process gets here (no-op with one process).

    Hosts reach the first collective at different times (one compiled, another read the compilation cache); the
    collectives' own rendezvous gives up after 30 s, so the loop lines the hosts up first with a long timeout.
    """
    if jax.process_count() == 1:
        return
    from jax._src import distributed

    client = distributed.global_state.client
    if client is None:
        return
    client.wait_at_barrier(name, timeout_in_ms=timeout_s * 1000)
