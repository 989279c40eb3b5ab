"""Read any image file as (H, W, 3) uint8 RGB, with one documented outcome for every awkward input.

Used by ``make-data`` and by the super-resolution command, so both treat odd files the same way:

=====================================  =====================================================================
input                                  outcome
=====================================  =====================================================================
missing, empty, truncated or corrupt   ``ImageDecodeError`` naming the file (``make-data`` skips and counts it)
grayscale (L, 1-bit, 16-bit I;16)      converted: the gray channel repeated to RGB (note ``gray``)
alpha (RGBA, LA, palette + tRNS)       converted: composited on white (note ``alpha_composited``); ``alpha="drop"``
                                       keeps the stored colour and discards alpha, as OpenCV's colour read does
16-bit per channel (PNG, TIFF)         converted: scaled to 8 bits with rounding, v8 = round(v16 / 257)
                                       (note ``16bit_scaled``); read through OpenCV, which keeps all 16 bits
CMYK JPEG/TIFF                         converted to RGB, through the embedded ICC profile when there is one
                                       (note ``cmyk_converted``)
palette (P)                            converted: expanded to RGB (note ``palette``)
EXIF orientation tag                   applied, so the pixels stand as a viewer shows them (note ``exif_rotated``)
multi-frame (GIF, TIFF pages)          the first frame
=====================================  =====================================================================

Why white for alpha: the colour under fully transparent pixels is undefined (often black or leftovers of an
editor), while a viewer shows the image over a light background; a super-resolved logo should look like that.
Images smaller than a training crop are not a decoding matter: ``degradations.random_crop`` pads them
(reflect-101).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError
from xpsr_jax.errors import XPSRError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageDecodeError(XPSRError, ValueError):
    """An image file that cannot be read; the message names the file and the cause."""


@dataclass(frozen=True)
class DecodedImage:
    """rgb: (H, W, 3) uint8. notes: the conversions applied, e.g. ``("gray", "16bit_scaled")``."""

    rgb: np.ndarray
    notes: tuple[str, ...] = ()


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files under ``folder`` (recursively, by extension, case-insensitive), sorted by relative path.

    Hidden files and folders (a leading dot) are left out. The order is stable across machines, so an index
    into this list can seed random draws.
    """
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _scale16(arr: np.ndarray) -> np.ndarray:
    """uint16 -> uint8 with rounding (0 -> 0, 65535 -> 255)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _composite(rgb: np.ndarray, alpha: np.ndarray, mode: str) -> np.ndarray:
    if mode == "drop":
        return rgb
    a = alpha.astype(np.float32)[..., None] / 255.0
    return np.clip(np.rint(rgb.astype(np.float32) * a + 255.0 * (1.0 - a)), 0, 255).astype(np.uint8)


def _is_high_depth(im: Image.Image) -> bool:
    """Whether PIL would narrow this image's 16-bit colour samples to 8 bits on its own (by truncation)."""
    if not im.tile:
        return False
    args = im.tile[0][3]
    rawmode = args[0] if isinstance(args, tuple) and args else args
    return isinstance(rawmode, str) and ";16" in rawmode and im.mode in ("RGB", "RGBA")


def _decode_opencv_16bit(data: bytes, name: str) -> DecodedImage:
    """16-bit colour PNG/TIFF through OpenCV, which keeps every bit (PIL keeps only the high byte)."""
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise ImageDecodeError(f"{name}: OpenCV cannot decode this 16-bit image")
    notes = ["16bit_scaled"] if arr.dtype == np.uint16 else []
    arr = _scale16(arr) if arr.dtype == np.uint16 else arr.astype(np.uint8)
    if arr.ndim == 2:
        return DecodedImage(np.repeat(arr[..., None], 3, axis=2), tuple(notes + ["gray"]))
    if arr.shape[2] == 4:
        return DecodedImage(cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA), tuple(notes))  # alpha handled by caller
    return DecodedImage(np.ascontiguousarray(arr[..., ::-1]), tuple(notes))


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    profile = im.info.get("icc_profile")
    if profile:
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: the plain formula below still gives a usable picture
    return im.convert("RGB")


def _to_rgb_array(im: Image.Image, data: bytes, name: str, alpha: str, notes: list[str],
                  high_depth: bool) -> np.ndarray:
    mode = im.mode
    if high_depth:
        decoded = _decode_opencv_16bit(data, name)
        notes.extend(decoded.notes)
        arr = decoded.rgb
        if arr.shape[2] == 4:
            notes.append("alpha_composited" if alpha == "white" else "alpha_dropped")
            arr = _composite(arr[..., :3], arr[..., 3], alpha)
        return arr
    if mode == "P":
        notes.append("palette")
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode == "CMYK":
        notes.append("cmyk_converted")
        return np.asarray(_cmyk_to_rgb(im))
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        notes.extend(["gray", "16bit_scaled"])
        g = np.clip(np.asarray(im, dtype=np.int64), 0, 65535).astype(np.uint16)
        return np.repeat(_scale16(g)[..., None], 3, axis=2)
    if mode == "F":  # float TIFF: taken as [0, 1]
        notes.append("gray")
        g = np.clip(np.rint(np.asarray(im, np.float32) * 255.0), 0, 255).astype(np.uint8)
        return np.repeat(g[..., None], 3, axis=2)
    if mode in ("1", "L"):
        notes.append("gray")
        return np.repeat(np.asarray(im.convert("L"))[..., None], 3, axis=2)
    if mode in ("LA", "La", "PA"):
        notes.extend(["gray", "alpha_composited" if alpha == "white" else "alpha_dropped"])
        la = np.asarray(im.convert("LA"))
        g = np.repeat(la[..., :1], 3, axis=2)
        return _composite(g, la[..., 1], alpha)
    if mode in ("RGBA", "RGBa"):
        notes.append("alpha_composited" if alpha == "white" else "alpha_dropped")
        rgba = np.asarray(im.convert("RGBA"))
        return _composite(rgba[..., :3], rgba[..., 3], alpha)
    return np.asarray(im.convert("RGB"))


def decode_image(data: bytes, name: str = "<bytes>", alpha: str = "white") -> DecodedImage:
    """Encoded bytes -> ``DecodedImage`` following the table in the module docstring.

    name: what error messages call the input (a path). alpha: ``"white"`` (composite) or ``"drop"``.
    Raises ``ImageDecodeError`` (naming ``name``) for empty, truncated, corrupt or unsupported data.
    """
    if alpha not in ("white", "drop"):
        raise ValueError(f"alpha must be 'white' or 'drop', got {alpha!r}")
    if not data:
        raise ImageDecodeError(f"{name}: empty file")
    notes: list[str] = []
    try:
        with Image.open(io.BytesIO(data)) as im:
            high_depth = _is_high_depth(im)  # read before load(), which clears the tile list
            im.load()  # PIL is lazy: truncation only shows when the pixels are read
            # 16-bit colour goes through OpenCV, which ignores EXIF; such files rarely carry an orientation tag
            if not high_depth and _exif_orientation(im) not in (None, 1):
                notes.append("exif_rotated")
                im = ImageOps.exif_transpose(im)
            arr = _to_rgb_array(im, data, name, alpha, notes, high_depth)
    except ImageDecodeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        # PIL reports truncation and corruption as OSError/SyntaxError/ValueError, depending on the format
        raise ImageDecodeError(f"{name}: cannot decode image ({type(e).__name__}: {e})") from e
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ImageDecodeError(f"{name}: decoded to an unusable shape {arr.shape}")
    return DecodedImage(arr, tuple(notes))


def _exif_orientation(im: Image.Image) -> int | None:
    try:
        return im.getexif().get(0x0112)
    except Exception:  # noqa: BLE001 - a broken EXIF block is not a reason to reject the pixels
        return None


def read_image(path: str | os.PathLike, alpha: str = "white") -> DecodedImage:
    """A file -> ``DecodedImage``; unreadable files raise ``ImageDecodeError`` naming ``path``."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ImageDecodeError(f"{path}: cannot read file ({e.strerror or e})") from e
    return decode_image(data, str(path), alpha)


def load_rgb_uint8(path: str | os.PathLike, alpha: str = "white") -> np.ndarray:
    """A file -> (H, W, 3) uint8 RGB (see the module docstring); raises ``ImageDecodeError`` naming ``path``."""
    return read_image(path, alpha).rgb
