"""Fresh parameters on the host, with PyTorch's default initialisation, without compiling the model.

Linen's ``init`` runs the whole forward pass under ``jit``; for the XPSR networks that compile costs minutes on a
CPU, once per process. The rules are few and depend only on a parameter's name and its siblings, so this module
applies them to the abstract tree from ``jax.eval_shape`` in NumPy:

* ``kernel`` (conv (kh, kw, in, out) or dense (in, out)) and its ``bias``: U(-1/sqrt(fan_in), 1/sqrt(fan_in));
* norm ``scale``: 1, norm ``bias``: 0 (a ``bias`` beside a ``scale``);
* ``embedding``: N(0, 1);
* modules matching ``zero_modules`` (the ControlNet's zero convs): 0.

Each leaf draws from its own generator seeded by (seed, path), so adding a module never changes the others.
The layer classes in ``layers.py`` implement the same rules for linen's own ``init``.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Sequence

import numpy as np
from flax.traverse_util import flatten_dict, unflatten_dict


def fresh_params(abstract: Any, seed: int, zero_modules: Sequence[str] = ()) -> dict:
    """Abstract (ShapeDtypeStruct) tree -> NumPy tree. ``zero_modules``: regexes fully matching a module path."""
    flat = flatten_dict(abstract)
    zero = [re.compile(p) for p in zero_modules]
    out = {}
    for path, leaf in flat.items():
        module, name = "/".join(path[:-1]), path[-1]
        shape, dtype = tuple(leaf.shape), np.dtype(leaf.dtype)
        rng = np.random.default_rng([seed, zlib.crc32("/".join(path).encode())])
        if any(z.fullmatch(module) for z in zero):
            value = np.zeros(shape)
        elif name == "scale":
            value = np.ones(shape)
        elif name == "embedding":
            value = rng.standard_normal(shape)
        elif name == "bias" and path[:-1] + ("scale",) in flat:
            value = np.zeros(shape)
        elif name in ("kernel", "bias"):
            kernel = flat[path[:-1] + ("kernel",)]
            fan_in = int(np.prod(kernel.shape[:-1]))
            bound = 1.0 / np.sqrt(fan_in)
            value = rng.uniform(-bound, bound, shape)
        else:
            raise ValueError(f"no initialisation rule for parameter {'/'.join(path)}")
        out[path] = value.astype(dtype)
    return unflatten_dict(out)
