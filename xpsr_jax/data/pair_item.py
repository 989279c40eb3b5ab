"""One ``make-data`` item: HR reference -> decoded, cropped, degraded, PNG-encoded pair (or a reason to skip).

Runs in worker processes, so its inputs are small picklable values and its random numbers come only from
``(seed, epoch, index)``: the same item gives the same bytes whichever worker or host makes it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from xpsr_jax.data.degradation_config import DegradationConfig
from xpsr_jax.data.degradations import degrade_pair, draw_chain
from xpsr_jax.data.hr_sources import TfdsSpec, read_hr
from xpsr_jax.data.images import ImageDecodeError
from xpsr_jax.data.records import encode_png

# skip reasons, as counted in the summary
CORRUPT, TOO_SMALL, TOO_FEW_BYTES, DUPLICATE_ID = "corrupt", "too_small", "too_few_bytes", "duplicate_id"


@dataclass(frozen=True)
class ItemSettings:
    """Everything an item needs besides its own reference; shared by all items of a run."""

    seed: int = 0
    degradation: DegradationConfig = field(default_factory=DegradationConfig)
    lr_size: int = 512  # degradation.gt_size (bicubic-upsampled LR, as XPSR trains) or gt_size / scale
    hr_only: bool = False  # store the whole decoded HR image and no LR (the pipeline degrades online)
    share_draws: int = 0  # B > 0: items index // B of one epoch share the batch-level draws (official: 10)
    alpha: str = "white"
    min_pixels: int = 0
    min_bytes: int = 0
    tfds: TfdsSpec | None = None

    def __post_init__(self):
        cfg = self.degradation
        if not self.hr_only and self.lr_size not in (cfg.gt_size, cfg.lr_size):
            raise ValueError(f"lr_size must be {cfg.gt_size} (upsampled) or {cfg.lr_size}, got {self.lr_size}")


@dataclass(frozen=True)
class ItemTask:
    flat: int
    epoch: int
    index: int
    reference: object  # a path (str) or a tfds index (int)
    origin: str
    duplicate_of: str | None = None


@dataclass
class ItemResult:
    """Either ``hr_png`` (+ ``lr_png``) and ``meta``, or ``skip`` (a reason above) with ``message``."""

    task: ItemTask
    hr_png: bytes = b""
    lr_png: bytes = b""
    meta: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    padded: bool = False
    skip: str | None = None
    message: str = ""


def item_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def _jsonable(value):
    """Degradation info (dataclasses, NumPy scalars, tuples) -> plain JSON values, floats to 6 digits."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return round(float(value), 6)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def make_item(task: ItemTask, settings: ItemSettings) -> ItemResult:
    """Make one item; decoding failures and filters give a skip result rather than an exception."""
    if task.duplicate_of is not None:
        return ItemResult(task, skip=DUPLICATE_ID, message=f"{task.origin}: same id as {task.duplicate_of}")
    try:
        decoded, nbytes = read_hr(task.reference, settings.alpha, settings.tfds)
    except ImageDecodeError as e:
        return ItemResult(task, skip=CORRUPT, message=str(e))
    h, w = decoded.rgb.shape[:2]
    if h * w < settings.min_pixels:
        return ItemResult(task, skip=TOO_SMALL, message=f"{task.origin}: {w}x{h} < {settings.min_pixels} pixels")
    if nbytes and nbytes < settings.min_bytes:
        return ItemResult(task, skip=TOO_FEW_BYTES, message=f"{task.origin}: {nbytes} < {settings.min_bytes} bytes")
    meta = {"seed": [settings.seed, task.epoch, task.index], "size": [h, w], "notes": list(decoded.notes)}
    if settings.hr_only:
        return ItemResult(task, hr_png=encode_png(decoded.rgb), meta=meta, notes=decoded.notes)

    cfg = settings.degradation
    rng = item_rng(settings.seed, task.epoch, task.index)
    draws = None
    if settings.share_draws > 0:  # the official batches of 10 share these draws (reference §8 item 22)
        batch_rng = np.random.default_rng([settings.seed, task.epoch, task.index // settings.share_draws, 1])
        draws = draw_chain(batch_rng, cfg, share_gray_field=True)
    info: dict = {}
    hr, lr_up, lr_small = degrade_pair(decoded.rgb, rng, cfg, draws=draws, info=info)
    padded = h < cfg.gt_size or w < cfg.gt_size
    meta["crop"] = {"top": info.pop("top"), "left": info.pop("left"), "size": cfg.gt_size,
                    "flip": info.pop("flip"), "padded": padded}
    meta["degradation"] = _jsonable(info)
    lr = lr_up if settings.lr_size == cfg.gt_size else lr_small
    return ItemResult(task, hr_png=encode_png(hr), lr_png=encode_png(lr), meta=meta, notes=decoded.notes,
                      padded=padded)


# ---- worker-process plumbing: the settings arrive once per process through the pool initializer ----
_SETTINGS: ItemSettings | None = None


def init_worker(settings: ItemSettings) -> None:
    """Pool initializer: keep the settings and use one OpenCV thread (the pool provides the parallelism)."""
    global _SETTINGS
    import cv2

    cv2.setNumThreads(1)
    _SETTINGS = settings


def make_item_in_worker(task: ItemTask) -> ItemResult:
    assert _SETTINGS is not None, "init_worker was not called in this process"
    return make_item(task, _SETTINGS)
