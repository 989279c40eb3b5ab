"""An in-memory stand-in for make-data records, for tests, benchmarks and the demo: no files, no downloads.

``SyntheticSource(n)[i]`` is the decoded form of a record (what ``pipeline.decode_record`` returns): a dict with
``id``, ``hr`` and ``lr`` (H, W, 3) uint8 arrays (``lr`` None for HR-only sources) and the four prompts. Pictures
are procedural (shading, edges, texture) or crops of the photos passed as ``images``; the LR is a cheap stand-in
for the degradation chain (area down ×4, noise, cubic up), enough to tell LR from HR. Every example depends only
on ``(seed, i)``, so the source can be rebuilt in worker processes.
"""

from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


def procedural_image(rng: np.random.Generator, size: int) -> np.ndarray:
    """(size, size, 3) uint8 picture with smooth colour gradients, hard edges and fine texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / max(size, 1)
    f = rng.uniform(2.0, 12.0, size=4)
    base = 0.5 + 0.2 * np.sin(f[0] * 6.28 * xx + f[1] * yy) + 0.15 * ((xx * f[2]).astype(int) % 2)
    colour = rng.uniform(0.6, 1.2, size=3).astype(np.float32)
    img = base[..., None] * colour + 0.1 * np.cos(f[3] * 6.28 * yy)[..., None]
    img += rng.normal(0.0, 0.03, img.shape).astype(np.float32)
    return np.clip(img * 255.0, 0, 255).astype(np.uint8)


def cheap_lr(hr: np.ndarray, rng: np.random.Generator, scale: int = 4) -> np.ndarray:
    """A fast LR stand-in at the HR size: area downscale, Gaussian noise, bicubic upscale (uint8)."""
    h, w = hr.shape[:2]
    small = cv2.resize(hr, (max(w // scale, 1), max(h // scale, 1)), interpolation=cv2.INTER_AREA)
    small = np.clip(small.astype(np.float32) + rng.normal(0.0, 6.0, small.shape), 0, 255).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _crop(photo: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
    h, w = photo.shape[:2]
    if min(h, w) < size:
        factor = size / min(h, w)
        photo = cv2.resize(photo, (max(size, round(w * factor)), max(size, round(h * factor))),
                           interpolation=cv2.INTER_CUBIC)
        h, w = photo.shape[:2]
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    return np.ascontiguousarray(photo[top:top + size, left:left + size])


class SyntheticSource:
    """A random-access source of ``num_examples`` decoded records (see the module docstring).

    image_size: HR side. hr_only: no LR (for online degradation; then ``image_size`` may exceed the crop).
    images: optional (H, W, 3) uint8 photos to crop from instead of procedural pictures.
    """

    def __init__(self, num_examples: int, image_size: int = 512, seed: int = 0, hr_only: bool = False,
                 images: Sequence[np.ndarray] | None = None):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        self.num_examples = num_examples
        self.image_size = image_size
        self.seed = seed
        self.hr_only = hr_only
        self.images = [np.ascontiguousarray(np.asarray(im, np.uint8)[..., :3]) for im in images or ()]

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_examples:
            raise IndexError(f"index {index} out of range [0, {self.num_examples})")
        rng = np.random.default_rng([self.seed, index])
        if self.images:
            hr = _crop(self.images[index % len(self.images)], rng, self.image_size)
        else:
            hr = procedural_image(rng, self.image_size)
        return {
            "id": f"synthetic/{index:06d}",
            "hr": hr,
            "lr": None if self.hr_only else cheap_lr(hr, rng),
            "highlevel": f"a synthetic picture number {index}",
            "lowlevel": f"blurry and noisy, level {index % 5}",
            "highlevel_hr": f"a sharp synthetic picture number {index}",
            "lowlevel_hr": "clean and sharp",
        }


_SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field")


def sample_photos(n: int = 4, max_side: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """``n`` (H, W, 3) uint8 photos: real ones from scikit-image's bundled data when it is installed (it is not
    a requirement), else procedural pictures of varied sizes. ``max_side`` shrinks larger ones (area filter)."""
    photos = []
    try:
        import skimage.data

        photos = [getattr(skimage.data, name)() for name in _SKIMAGE_PHOTOS[:n]]
    except ImportError:
        pass
    rng = np.random.default_rng(seed)
    while len(photos) < n:
        side = int(rng.integers(300, 640))
        photos.append(procedural_image(rng, side)[: int(side * rng.uniform(0.6, 1.0))])
    out = []
    for p in photos:
        h, w = p.shape[:2]
        if max_side and max(h, w) > max_side:
            f = max_side / max(h, w)
            p = cv2.resize(p, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
        out.append(np.ascontiguousarray(p[..., :3]))
    return out
