"""Learned metrics computed through pyiqa, when pyiqa and the metric's weights are installed locally.

XPSR's paper reports DISTS, FID, CLIP-IQA, MUSIQ and MANIQA (and the official script also prints NIQE), all from
pyiqa 0.1.10 with its default settings. Those metrics need PyTorch networks whose weights pyiqa, torchvision
or CLIP download on first use. This project does not depend on pyiqa: when it is installed *and* the weights are
already in its caches (the torch hub ``checkpoints`` folder, ``~/.cache/clip``), the metrics run; otherwise a
:class:`MetricUnavailable` explains what is missing. Every download is refused while a metric is created or
run, so an offline machine fails fast with the file name to provide instead of hanging on the network.
"""

from __future__ import annotations

import contextlib
import os
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable
from xpsr_jax.errors import XPSRError

# name -> (kind, lower_is_better). kind: "FR" full reference per image, "NR" no reference per image,
# "SET" a distance between the two folders as wholes.
EXTERNAL_METRICS: dict[str, tuple[str, bool]] = {
    "dists": ("FR", True),
    "fid": ("SET", True),
    "niqe": ("NR", True),
    "clipiqa": ("NR", False),
    "musiq": ("NR", False),
    "maniqa": ("NR", False),
    "liqe": ("NR", False),
}
PYIQA_VERSION_USED_BY_XPSR = "0.1.10"


class MetricUnavailable(XPSRError, RuntimeError):
    """A requested metric cannot run here; the message says why and what to install or copy."""


class _DownloadRefused(RuntimeError):
    def __init__(self, url: Any, dest: Any = None):
        super().__init__(url)
        self.url = getattr(url, "full_url", url)
        self.dest = dest


def _hub_checkpoints() -> str:
    try:
        import torch.hub

        return os.path.join(torch.hub.get_dir(), "checkpoints")
    except ImportError:
        return "<torch hub dir>/checkpoints"


@contextlib.contextmanager
def _no_downloads():
    """Make every download path that pyiqa and its dependencies use raise instead of reaching the network."""

    def refuse(url, dst=None, *args, **kwargs):
        raise _DownloadRefused(url, dst)

    targets = [(urllib.request, "urlopen")]
    with contextlib.suppress(ImportError):
        import torch.hub

        targets.append((torch.hub, "download_url_to_file"))
    with contextlib.suppress(ImportError):
        # pyiqa imports the torch.hub function by name, so its own reference must be replaced too.
        import pyiqa.utils.download_util as pyiqa_download

        targets.append((pyiqa_download, "download_url_to_file"))
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr in targets if hasattr(obj, attr)]
    env_saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    try:
        for obj, attr, _ in saved:
            setattr(obj, attr, refuse)
        os.environ.update({k: "1" for k in env_saved})
        yield
    finally:
        for obj, attr, original in saved:
            setattr(obj, attr, original)
        for k, v in env_saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _import_pyiqa(name: str):
    try:
        import pyiqa
    except ImportError as exc:
        raise MetricUnavailable(
            f"needs the optional package pyiqa (XPSR used pyiqa=={PYIQA_VERSION_USED_BY_XPSR}) with its "
            f"weights already in the torch hub cache ({_hub_checkpoints()}); pyiqa is not installed ({exc})"
        ) from exc
    return pyiqa


def _refused_message(name: str, version: str, err: _DownloadRefused) -> str:
    where = f" to {err.dest}" if err.dest else ""
    return (f"its weights are not available locally; pyiqa {version} would download {err.url}{where}. "
            f"Copy that file there (this machine cannot download it) to enable {name}.")


def _to_float(value: Any) -> float:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().mean().item()
    return float(value)


@dataclass
class ExternalMetric:
    """A loaded pyiqa metric with the calling convention of its kind."""

    name: str
    kind: str
    lower_better: bool
    version: str
    _metric: Callable

    def _call(self, *args, **kwargs) -> float:
        with _no_downloads():
            try:
                return _to_float(self._metric(*args, **kwargs))
            except _DownloadRefused as err:
                raise MetricUnavailable(_refused_message(self.name, self.version, err)) from err

    def image(self, pred_path: str, gt_path: str | None = None) -> float:
        """Score one prediction (FR metrics compare it with ``gt_path``); pyiqa reads the files itself."""
        if self.kind == "FR":
            return self._call(str(pred_path), str(gt_path))
        if self.kind == "NR":
            return self._call(str(pred_path))
        raise TypeError(f"{self.name} compares folders, not images")

    def folders(self, pred_dir: str, gt_dir: str) -> float:
        """The distance between the image sets of two folders (FID)."""
        if self.kind != "SET":
            raise TypeError(f"{self.name} scores images, not folders")
        try:
            # Worker processes would fight for the machine's cores; loading is not the bottleneck here.
            return self._call(str(pred_dir), str(gt_dir), num_workers=0, verbose=False)
        except TypeError:
            return self._call(str(pred_dir), str(gt_dir))

    def describe(self) -> dict:
        return {
            "implementation": f"pyiqa {self.version} '{self.name}' with pyiqa's default settings",
            "kind": {"FR": "full reference, per image", "NR": "no reference, per image",
                     "SET": "between the two folders as wholes (every image in them, paired or not)"}[self.kind],
        }


def load_external(name: str, device: str = "cpu") -> ExternalMetric:
    """Create pyiqa's metric ``name`` without downloading anything; raise MetricUnavailable when impossible."""
    if name not in EXTERNAL_METRICS:
        raise ValueError(f"unknown pyiqa metric {name!r}; known: {sorted(EXTERNAL_METRICS)}")
    kind, lower_better = EXTERNAL_METRICS[name]
    pyiqa = _import_pyiqa(name)
    version = str(getattr(pyiqa, "__version__", "unknown"))
    with _no_downloads():
        try:
            metric = pyiqa.create_metric(name, device=device, as_loss=False)
        except _DownloadRefused as err:
            raise MetricUnavailable(_refused_message(name, version, err)) from err
        except Exception as exc:  # pyiqa raises many kinds of errors for a missing or broken weight file
            raise MetricUnavailable(f"pyiqa {version} could not create it: {type(exc).__name__}: {exc}") \
                from exc
    return ExternalMetric(name, kind, lower_better, version, metric)
