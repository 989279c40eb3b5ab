"""Every probability and range of the degradation chain, with the values XPSR's data generation actually uses.

Those are the values of the official ``utils_data/make_train.py`` (reference §4.1), **not** the weaker settings of
its ``params_realesrgan.yml``, which the official training code loads but never applies (reference §8 item 9).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from xpsr_jax.data.kernels import FinalSincConfig, KernelConfig

RESIZE_MODES = ("area", "bilinear", "bicubic")


@dataclass(frozen=True)
class StageConfig:
    """One degradation stage: blur -> random resize -> noise -> JPEG (the second stage's JPEG is the final one)."""

    blur_prob: float
    resize_prob: tuple[float, float, float]  # probabilities of (up, down, keep)
    resize_range: tuple[float, float]  # a down scale is U(lo, 1), an up scale U(1, hi)
    gaussian_noise_prob: float  # else Poisson noise
    noise_range: tuple[float, float]  # Gaussian σ on the 0-255 scale
    poisson_scale_range: tuple[float, float]
    gray_noise_prob: float  # one noise field for all channels
    jpeg_range: tuple[float, float]  # quality, drawn uniformly, rounded to an integer for libjpeg


def _stage1() -> StageConfig:
    return StageConfig(blur_prob=1.0, resize_prob=(0.2, 0.7, 0.1), resize_range=(0.15, 1.5),
                       gaussian_noise_prob=0.5, noise_range=(1.0, 30.0), poisson_scale_range=(0.05, 3.0),
                       gray_noise_prob=0.4, jpeg_range=(30.0, 95.0))


def _stage2() -> StageConfig:
    return StageConfig(blur_prob=0.8, resize_prob=(0.3, 0.4, 0.3), resize_range=(0.3, 1.2),
                       gaussian_noise_prob=0.5, noise_range=(1.0, 25.0), poisson_scale_range=(0.05, 2.5),
                       gray_noise_prob=0.4, jpeg_range=(30.0, 95.0))


def _kernel2() -> KernelConfig:
    # only σ differs from the first kernel; the official kernel-size-2 setting (11) is unused: sizes are 7...21
    return KernelConfig(sigma_range=(0.2, 1.5))


@dataclass(frozen=True)
class DegradationConfig:
    """The whole chain. Images: ``gt_size``² HR crops, (gt_size/scale)² LR."""

    gt_size: int = 512
    scale: int = 4
    use_hflip: bool = True  # horizontal flip with p = 0.5 (no rotation)
    use_usm: bool = True  # the HR target and the chain's input are the USM-sharpened crop (reference §8 item 10)
    usm_weight: float = 0.5
    usm_radius: int = 50
    usm_threshold: float = 10.0  # on the 0-255 scale
    kernel1: KernelConfig = field(default_factory=KernelConfig)
    kernel2: KernelConfig = field(default_factory=_kernel2)
    final_sinc: FinalSincConfig = field(default_factory=FinalSincConfig)
    stage1: StageConfig = field(default_factory=_stage1)
    stage2: StageConfig = field(default_factory=_stage2)
    resize_modes: tuple[str, ...] = RESIZE_MODES  # drawn uniformly for each resize
    resize_first_prob: float = 0.5  # final order: [resize + sinc] -> JPEG, else JPEG -> [resize + sinc]

    @property
    def lr_size(self) -> int:
        return self.gt_size // self.scale
