"""Pixel operations of the degradation chain on float32 (H, W, 3) RGB images in [0, 1].

Each function does one thing and takes its random numbers from an explicit ``numpy.random.Generator`` (or already
drawn values), so the chain in ``degradations.py`` decides what is shared and what is drawn per image.
How each one relates to the PyTorch reference (basicsr as used by XPSR's data generation):

* ``filter2d``: correlation with reflect-101 borders (PyTorch ``F.pad(mode='reflect')`` + ``conv2d``).
* ``usm_sharpen``: unsharp masking with a 51×51 Gaussian (σ = 8.3) and a soft threshold mask.
* noise: Gaussian with σ on the 0–255 scale; Poisson on an image quantised to 8 bits and scaled to a power-of-two
  number of levels; colour (independent per channel) or gray (one field for all channels).
* ``jpeg``: real libjpeg through OpenCV. The reference uses DiffJPEG (a PyTorch re-implementation: float quality,
  unrounded quantisation tables, no pixel rounding, nearest chroma upsampling); libjpeg rounds the quality to an
  integer, the tables to integers and the pixels to 8 bits, and upsamples chroma smoothly. Blocking and ringing
  are the same kind and size.
"""

from __future__ import annotations

import cv2
import numpy as np

# ITU-R BT.601 luma weights as in torchvision's rgb_to_grayscale (used for gray Poisson noise)
_GRAY = np.array([0.2989, 0.587, 0.114], dtype=np.float32)


def trim_kernel(kernel: np.ndarray) -> np.ndarray:
    """Drop the all-zero frame of a centred odd (K, K) kernel (keeps it centred and odd)."""
    k = kernel.shape[0]
    used = np.flatnonzero(np.any(kernel != 0, axis=0) | np.any(kernel != 0, axis=1))
    if used.size == 0:
        return kernel
    r = max(k // 2 - used[0], used[-1] - k // 2)
    return kernel[k // 2 - r:k // 2 + r + 1, k // 2 - r:k // 2 + r + 1]


def filter2d(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate an (H, W[, C]) float32 image with an odd (K, K) kernel, reflect-101 borders; same shape out.

    Kernels arrive zero-padded to 21×21; the zero frame is trimmed first (same result, up to 10× faster).
    """
    kernel = trim_kernel(np.asarray(kernel, dtype=np.float32))
    if kernel.shape == (1, 1):  # the identity pulse (or a scaled one)
        return img * kernel[0, 0]
    out = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return out[..., None] if out.ndim < img.ndim else out  # OpenCV drops a trailing channel axis of size 1


def usm_sharpen(img: np.ndarray, weight: float = 0.5, radius: int = 50, threshold: float = 10.0) -> np.ndarray:
    """Unsharp masking: img + weight·(img - blur) where |img - blur|·255 > threshold, feathered by a blurred mask.

    img: (H, W, C) float32 in [0, 1] -> same shape, float32, in [0, 1]. ``radius`` is the Gaussian window (made
    odd); σ follows OpenCV's rule for σ = 0, 0.3·((radius - 1)/2 - 1) + 0.8 = 8.3 for 51.
    """
    if radius % 2 == 0:
        radius += 1
    k1d = cv2.getGaussianKernel(radius, 0).astype(np.float32)

    def blur(x):  # the 2-D Gaussian is separable: two 1-D passes instead of one 51×51 correlation
        return cv2.sepFilter2D(x, -1, k1d, k1d, borderType=cv2.BORDER_REFLECT_101)

    img = np.asarray(img, dtype=np.float32)
    residual = img - blur(img)
    mask = (np.abs(residual) * np.float32(255) > threshold).astype(np.float32)
    soft_mask = blur(mask)
    if soft_mask.ndim < img.ndim:  # OpenCV drops a trailing channel axis of size 1
        soft_mask = soft_mask[..., None]
    sharp = np.clip(img + np.float32(weight) * residual, 0.0, 1.0)
    return soft_mask * sharp + (1.0 - soft_mask) * img


def gaussian_noise(shape: tuple[int, int, int], rng: np.random.Generator, sigma: float, gray: bool,
                   gray_field: np.ndarray | None = None) -> np.ndarray:
    """Zero-mean Gaussian noise of std ``sigma``/255 and ``shape`` (H, W, C), float32.

    Gray noise is one (H, W, 1) field broadcast over channels; ``gray_field`` supplies that standard-normal field
    (used to share it across a batch, as the reference does), else it is drawn from ``rng``.
    """
    h, w, c = shape
    if gray:
        field = rng.standard_normal((h, w, 1), dtype=np.float32) if gray_field is None else gray_field
        return np.broadcast_to(field * np.float32(sigma / 255.0), shape)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(sigma / 255.0)


def add_gaussian_noise(img: np.ndarray, rng: np.random.Generator, sigma: float, gray: bool = False,
                       gray_field: np.ndarray | None = None) -> np.ndarray:
    """img + N(0, (sigma/255)²), clipped to [0, 1] (no rounding). img: (H, W, C) float32."""
    return np.clip(img + gaussian_noise(img.shape, rng, sigma, gray, gray_field), 0.0, 1.0)


def _levels(quantised: np.ndarray) -> float:
    """2^ceil(log2(number of distinct 8-bit values)): the photon-count scale of the Poisson model."""
    distinct = np.count_nonzero(np.bincount(quantised.ravel(), minlength=256))
    return float(2.0 ** np.ceil(np.log2(max(distinct, 1))))


def _poisson_on(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    q8 = np.clip(np.rint(values * np.float32(255.0)), 0, 255).astype(np.uint8)
    base = q8.astype(np.float32) / np.float32(255.0)
    vals = _levels(q8)
    # the image quantised to 8 bits is read as vals·x expected photons; noise = measured/vals - x
    return (rng.poisson(base * vals).astype(np.float32) / np.float32(vals)) - base


def poisson_noise(img: np.ndarray, rng: np.random.Generator, scale: float, gray: bool) -> np.ndarray:
    """Shot noise for an (H, W, 3) float32 image in [0, 1], multiplied by ``scale``; float32, same shape.

    Its std at intensity x is about scale·sqrt(x / vals) with vals the power of two above the number of distinct
    8-bit levels in the image (or in its luma when ``gray``; the gray field is then shared by all channels).
    """
    if gray:
        luma = np.tensordot(img, _GRAY, axes=([-1], [0]))[..., None].astype(np.float32)
        return np.broadcast_to(_poisson_on(luma, rng) * np.float32(scale), img.shape)
    return _poisson_on(img, rng) * np.float32(scale)


def add_poisson_noise(img: np.ndarray, rng: np.random.Generator, scale: float, gray: bool = False) -> np.ndarray:
    """img + scale·(Poisson noise), clipped to [0, 1] (no rounding)."""
    return np.clip(img + poisson_noise(img, rng, scale, gray), 0.0, 1.0)


def jpeg(img: np.ndarray, quality: int) -> np.ndarray:
    """JPEG round trip (libjpeg, 4:2:0) of an (H, W, 3) RGB float32 image in [0, 1] at integer ``quality`` 1–100.

    The input is rounded to 8 bits first (JPEG has no float input); the output is float32 in [0, 1].
    """
    bgr = to_uint8(img)[:, :, ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    return decoded.astype(np.float32) / np.float32(255.0)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8 the way ``cv2.imwrite(path, img * 255)`` stores it: round half to even, saturate."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * np.float32(255.0)), 0, 255).astype(np.uint8)
