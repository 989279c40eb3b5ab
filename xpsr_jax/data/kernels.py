"""Blur kernels of the Real-ESRGAN degradation model, drawn with a ``numpy.random.Generator``.

Every kernel is a float64 (K, K) array, K odd, summing to 1. Coordinates are offsets from the centre pixel:
``x`` runs along columns, ``y`` along rows, so a kernel with ``sigma_x > sigma_y`` and ``theta = 0`` is wider than it
is tall. The shape families are (q = [x y] Σ⁻¹ [x y]ᵀ, Σ = R(θ) diag(σx², σy²) R(θ)ᵀ):

* Gaussian               exp(-q / 2)
* generalized Gaussian   exp(-q^β / 2)        (β = 1 is the Gaussian)
* plateau                1 / (1 + q^β)
* sinc (circular low-pass) ω_c J1(ω_c r) / (2π r), the ideal 2-D low-pass with cut-off ω_c rad/pixel

The sampler reproduces the draws of XPSR's data generation (reference §4.1): a kernel size uniform over 7, 9, …, 21;
with probability ``sinc_prob`` a sinc kernel (ω_c ∈ [π/3, π] for sizes < 13, else [π/5, π]); otherwise one of six
families chosen with fixed probabilities. Kernels are then zero-padded to 21×21 so a batch can stack them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import special

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
KERNEL_SIZES = tuple(range(7, 22, 2))  # 7, 9, ..., 21
PAD_TO = 21


@dataclass(frozen=True)
class KernelConfig:
    """Distribution of one blur kernel. Defaults: the first-stage kernel of XPSR's data generation."""

    kernel_types: tuple[str, ...] = KERNEL_TYPES
    kernel_probs: tuple[float, ...] = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma_range: tuple[float, float] = (0.2, 3.0)
    rotation_range: tuple[float, float] = (-math.pi, math.pi)
    betag_range: tuple[float, float] = (0.5, 4.0)  # generalized Gaussian shape β
    betap_range: tuple[float, float] = (1.0, 2.0)  # plateau shape β
    sinc_prob: float = 0.1
    sizes: tuple[int, ...] = KERNEL_SIZES
    # ω_c range of a sinc kernel: (size < sinc_small_size) uses the first, larger kernels the second
    sinc_small_size: int = 13
    sinc_omega_small: tuple[float, float] = (math.pi / 3, math.pi)
    sinc_omega_large: tuple[float, float] = (math.pi / 5, math.pi)
    pad_to: int = PAD_TO


@dataclass(frozen=True)
class FinalSincConfig:
    """The sinc filter applied after the last resize (else an identity pulse)."""

    prob: float = 0.8
    sizes: tuple[int, ...] = KERNEL_SIZES
    omega_range: tuple[float, float] = (math.pi / 3, math.pi)
    pad_to: int = PAD_TO


@dataclass(frozen=True)
class KernelSpec:
    """The random parameters of one kernel; ``render(spec)`` turns it into an array."""

    kind: str  # one of KERNEL_TYPES, "sinc" or "pulse"
    size: int
    sigma_x: float = 0.0
    sigma_y: float = 0.0
    theta: float = 0.0
    beta: float = 1.0
    omega_c: float = 0.0
    pad_to: int = PAD_TO


# ----------------------------------------------------------------------------------------------------------------
# closed-form kernels
# ----------------------------------------------------------------------------------------------------------------


def mesh_grid(size: int) -> np.ndarray:
    """(size, size, 2) float64 offsets from the centre; [..., 0] = x (column), [..., 1] = y (row)."""
    if size % 2 != 1:
        raise ValueError(f"kernel size must be odd, got {size}")
    ax = np.arange(size, dtype=np.float64) - size // 2
    xx, yy = np.meshgrid(ax, ax)
    return np.stack([xx, yy], axis=-1)


def sigma_matrix(sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    """2×2 covariance R(θ) diag(σx², σy²) R(θ)ᵀ (θ in radians, counter-clockwise in x-y)."""
    c, s = math.cos(theta), math.sin(theta)
    rot = np.array([[c, -s], [s, c]])
    return rot @ np.diag([sigma_x**2, sigma_y**2]) @ rot.T


def _quadratic_form(size: int, sigma_x: float, sigma_y: float, theta: float) -> np.ndarray:
    grid = mesh_grid(size)
    inv = np.linalg.inv(sigma_matrix(sigma_x, sigma_y, theta))
    return np.einsum("...i,ij,...j->...", grid, inv, grid)


def _normalise(kernel: np.ndarray) -> np.ndarray:
    return kernel / kernel.sum()


def gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0) -> np.ndarray:
    """Bivariate Gaussian; isotropic when ``sigma_y`` is None (θ is then irrelevant)."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * _quadratic_form(size, sigma_x, sigma_y, theta)))


def generalized_gaussian_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                                beta: float = 1.0) -> np.ndarray:
    """exp(-q^β / 2): flatter top and sharper fall-off than a Gaussian for β > 1, heavier tails for β < 1."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(np.exp(-0.5 * np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta)))


def plateau_kernel(size: int, sigma_x: float, sigma_y: float | None = None, theta: float = 0.0,
                   beta: float = 1.0) -> np.ndarray:
    """1 / (1 + q^β): a flat plateau with polynomial tails."""
    sigma_y = sigma_x if sigma_y is None else sigma_y
    return _normalise(1.0 / (np.power(_quadratic_form(size, sigma_x, sigma_y, theta), beta) + 1.0))


def circular_lowpass_kernel(omega_c: float, size: int, pad_to: int = 0) -> np.ndarray:
    """Truncated ideal circular low-pass filter with cut-off ``omega_c`` ∈ (0, π] rad/pixel, normalised to sum 1.

    The centre takes the limit ω_c² / (4π) of ω_c J1(ω_c r) / (2π r) as r → 0. Zero-padded to ``pad_to`` when larger.
    """
    grid = mesh_grid(size)
    r = np.hypot(grid[..., 0], grid[..., 1])
    safe_r = np.where(r == 0, 1.0, r)  # the centre is overwritten below; avoids a 0/0 warning
    kernel = omega_c * special.j1(omega_c * safe_r) / (2 * np.pi * safe_r)
    kernel[size // 2, size // 2] = omega_c**2 / (4 * np.pi)
    kernel = _normalise(kernel)
    return pad_kernel(kernel, pad_to) if pad_to > size else kernel


def pulse_kernel(size: int = PAD_TO) -> np.ndarray:
    """Identity filter: 1 at the centre, 0 elsewhere."""
    kernel = np.zeros((size, size))
    kernel[size // 2, size // 2] = 1.0
    return kernel


def pad_kernel(kernel: np.ndarray, pad_to: int) -> np.ndarray:
    """Zero-pad a centred odd (K, K) kernel to (pad_to, pad_to)."""
    p = (pad_to - kernel.shape[0]) // 2
    if p < 0:
        raise ValueError(f"kernel of size {kernel.shape[0]} does not fit in {pad_to}")
    return np.pad(kernel, ((p, p), (p, p)))


# ----------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------


def _split_beta(rng: np.random.Generator, beta_range: tuple[float, float]) -> float:
    # Half the draws below 1 and half above, so β < 1 (heavy tails) is as likely as β > 1 even when the range is
    # lopsided. With the plateau range [1, 2] the lower half collapses to β = 1 exactly, as in the reference.
    if rng.uniform() < 0.5:
        return float(rng.uniform(beta_range[0], 1.0))
    return float(rng.uniform(1.0, beta_range[1]))


def sample_mixed_spec(rng: np.random.Generator, size: int, cfg: KernelConfig) -> KernelSpec:
    """Draw the family and parameters of one non-sinc kernel. Isotropic families have σy = σx and θ = 0."""
    probs = np.asarray(cfg.kernel_probs, dtype=np.float64)
    kind = cfg.kernel_types[int(rng.choice(len(cfg.kernel_types), p=probs / probs.sum()))]
    sigma_x = float(rng.uniform(*cfg.sigma_range))
    if not kind.endswith("aniso"):
        sigma_y, theta = sigma_x, 0.0
    else:
        sigma_y = float(rng.uniform(*cfg.sigma_range))
        theta = float(rng.uniform(*cfg.rotation_range))
    beta = 1.0
    if kind.startswith("generalized"):
        beta = _split_beta(rng, cfg.betag_range)
    elif kind.startswith("plateau"):
        beta = _split_beta(rng, cfg.betap_range)
    return KernelSpec(kind, size, sigma_x, sigma_y, theta, beta, pad_to=cfg.pad_to)


def sample_blur_spec(rng: np.random.Generator, cfg: KernelConfig) -> KernelSpec:
    """Draw a blur kernel as in the reference: size, then sinc-or-mixed, then the family's parameters."""
    size = int(rng.choice(cfg.sizes))
    if rng.uniform() < cfg.sinc_prob:
        lo, hi = cfg.sinc_omega_small if size < cfg.sinc_small_size else cfg.sinc_omega_large
        return KernelSpec("sinc", size, omega_c=float(rng.uniform(lo, hi)), pad_to=cfg.pad_to)
    return sample_mixed_spec(rng, size, cfg)


def sample_final_sinc_spec(rng: np.random.Generator, cfg: FinalSincConfig) -> KernelSpec:
    """The last filter: a sinc with probability ``cfg.prob``, else the identity pulse."""
    if rng.uniform() < cfg.prob:
        size = int(rng.choice(cfg.sizes))
        return KernelSpec("sinc", size, omega_c=float(rng.uniform(*cfg.omega_range)), pad_to=cfg.pad_to)
    return KernelSpec("pulse", cfg.pad_to, pad_to=cfg.pad_to)


def render(spec: KernelSpec) -> np.ndarray:
    """(pad_to, pad_to) float32 kernel, sum 1, for a drawn ``KernelSpec``."""
    kind, k = spec.kind, spec.size
    if kind == "pulse":
        kernel = pulse_kernel(k)
    elif kind == "sinc":
        kernel = circular_lowpass_kernel(spec.omega_c, k)
    elif kind in ("iso", "aniso"):
        kernel = gaussian_kernel(k, spec.sigma_x, spec.sigma_y, spec.theta)
    elif kind.startswith("generalized"):
        kernel = generalized_gaussian_kernel(k, spec.sigma_x, spec.sigma_y, spec.theta, spec.beta)
    elif kind.startswith("plateau"):
        kernel = plateau_kernel(k, spec.sigma_x, spec.sigma_y, spec.theta, spec.beta)
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    return pad_kernel(kernel, spec.pad_to).astype(np.float32)


def random_blur_kernel(rng: np.random.Generator, cfg: KernelConfig = KernelConfig()) -> np.ndarray:
    """(21, 21) float32 blur kernel drawn like the reference's first/second-stage kernels."""
    return render(sample_blur_spec(rng, cfg))


def random_final_sinc_kernel(rng: np.random.Generator, cfg: FinalSincConfig = FinalSincConfig()) -> np.ndarray:
    """(21, 21) float32 final sinc kernel, or the identity pulse."""
    return render(sample_final_sinc_spec(rng, cfg))
