"""Reading an LR image and bringing it to the size the model processes, then back to the output size (§5.2, §5.5).

The official chain, reproduced on PIL images so the pixels match:

1. resize the LR image (w, h) to (round(w*s), round(h*s)) with PIL bicubic (``s`` = upscale; the official script
   only takes integers, where rounding changes nothing);
2. if the short side is below ``process_size``: torchvision ``Resize(process_size, BILINEAR)``, i.e. the short side
   becomes ``process_size`` and the long side ``int(process_size * long / short)`` (truncated), PIL bilinear;
3. PIL bicubic to (w // 8 * 8, h // 8 * 8), a no-op when already aligned.

The result is the ControlNet condition in [0, 1] and, mapped to [-1, 1], the VAE input. The model's output at that
size is brought to exactly (round(w*s), round(h*s)) with PIL bicubic.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from xpsr_jax.data.images import ImageDecodeError, read_image

Size = tuple[int, int]  # (width, height), PIL's order


class ImageTooLargeError(ImageDecodeError):
    """An input (or what it would become) exceeds a pixel limit; raised before the pixels are decoded."""


def round_half_up(x: float) -> int:
    """round() without banker's rounding: 2.5 -> 3, so sizes never depend on parity."""
    return int(math.floor(x + 0.5))


@dataclass(frozen=True)
class SizePlan:
    """The sizes an image goes through, each (width, height).

    lr: the input; upscaled: lr x upscale (rounded, >= 1); resized: after raising the short side to process_size;
    process: ``resized`` floored to multiples of 8, what the VAE and ControlNet see (latent = process / 8);
    output: the saved image, equal to ``upscaled``.
    """

    lr: Size
    upscaled: Size
    resized: Size
    process: Size

    @property
    def output(self) -> Size:
        return self.upscaled

    @property
    def latent(self) -> tuple[int, int]:
        """(height, width) of the latent, NHWC order."""
        return self.process[1] // 8, self.process[0] // 8


def plan_sizes(lr_size: Size, upscale: float, process_size: int, max_process_pixels: int | None = None,
               name: str = "<image>") -> SizePlan:
    """The :class:`SizePlan` of an LR image of ``lr_size`` (width, height)."""
    w, h = lr_size
    if w < 1 or h < 1:
        raise ImageDecodeError(f"{name}: empty image ({w}x{h})")
    up = (max(1, round_half_up(w * upscale)), max(1, round_half_up(h * upscale)))
    resized = up
    short, long = min(up), max(up)
    if short < process_size:
        # torchvision's rule for an int size: the short side becomes `size`, the long side int(size * long / short).
        new_long = int(process_size * long / short)
        resized = (process_size, new_long) if up[0] <= up[1] else (new_long, process_size)
    process = (resized[0] // 8 * 8, resized[1] // 8 * 8)
    if min(process) < 8:
        raise ImageDecodeError(f"{name}: {w}x{h} x{upscale} gives {process[0]}x{process[1]}, below 8 pixels; "
                               f"raise process_size")
    if max_process_pixels is not None and process[0] * process[1] > max_process_pixels:
        raise ImageTooLargeError(
            f"{name}: {w}x{h} at x{upscale} would be processed at {process[0]}x{process[1]} = "
            f"{process[0] * process[1]:,} pixels, above the limit of {max_process_pixels:,} (max_process_pixels)")
    return SizePlan(lr=(w, h), upscaled=up, resized=resized, process=process)


def to_process_size(rgb: np.ndarray, plan: SizePlan) -> np.ndarray:
    """(h, w, 3) uint8 LR pixels -> (H, W, 3) uint8 at ``plan.process``, by the official chain of resizes."""
    if rgb.shape[:2] != (plan.lr[1], plan.lr[0]):
        raise ValueError(f"image of shape {rgb.shape} does not match the plan's LR size {plan.lr}")
    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
    im = im.resize(plan.upscaled, Image.Resampling.BICUBIC)
    if plan.resized != plan.upscaled:
        im = im.resize(plan.resized, Image.Resampling.BILINEAR)
    if plan.process != plan.resized:
        im = im.resize(plan.process, Image.Resampling.BICUBIC)
    return np.asarray(im, np.uint8)


def to_output_size(rgb: np.ndarray, plan: SizePlan) -> np.ndarray:
    """(H, W, 3) uint8 at the process size -> (round(h*s), round(w*s), 3) uint8, PIL bicubic."""
    im = Image.fromarray(np.ascontiguousarray(rgb, np.uint8), "RGB")
    if im.size != plan.output:
        im = im.resize(plan.output, Image.Resampling.BICUBIC)
    return np.asarray(im, np.uint8)


def image_size(path: str | os.PathLike) -> Size:
    """(width, height) from the file header alone (no pixel decoding); ImageDecodeError if unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.size
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{path}: refused before decoding, above max_input_pixels ({e})") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageDecodeError(f"{path}: cannot read image header ({type(e).__name__}: {e})") from e


def read_lr_image(path: str | os.PathLike, max_pixels: int | None) -> tuple[np.ndarray, tuple[str, ...]]:
    """A file -> ((h, w, 3) uint8 RGB, conversion notes). Too many pixels -> ImageTooLargeError before decoding.

    Grayscale, alpha, palette, 16-bit and CMYK inputs are converted as :mod:`xpsr_jax.data.images` documents;
    missing, empty, corrupt or truncated files raise ImageDecodeError naming the file.
    """
    path = Path(path)
    if max_pixels is not None and path.is_file() and path.stat().st_size > 0:
        try:
            w, h = image_size(path)
        except ImageTooLargeError:
            raise
        except ImageDecodeError:
            w = h = 0  # let the decoder produce its own, more specific message
        if w * h > max_pixels:
            raise ImageTooLargeError(f"{path}: {w}x{h} = {w * h:,} pixels, above the input limit of "
                                     f"{max_pixels:,} (max_input_pixels); split or downscale it first")
    decoded = read_image(path)
    return decoded.rgb, decoded.notes
