"""Evaluation of super-resolved images: metrics, per-dataset reports, and the ``xpsr-jax eval`` subcommand.

``metrics`` (PSNR/SSIM, NumPy), ``perceptual`` (LPIPS, JAX), ``optional`` (pyiqa-backed learned metrics),
``pairing`` (folders -> pairs and mismatches), ``evaluate`` (one dataset -> a JSON-ready result),
``report`` and ``html_page`` (Markdown, CSV, JSON, HTML), ``cli`` (the subcommand).
"""

__all__ = ["psnr", "rgb_to_y", "ssim", "lpips", "evaluate_dataset", "write_reports"]

_LAZY = {"psnr": "metrics", "rgb_to_y": "metrics", "ssim": "metrics", "lpips": "perceptual",
         "evaluate_dataset": "evaluate", "write_reports": "report"}


def __getattr__(name):
    # Imported on first use so that building the command-line parser stays free of SciPy/JAX imports.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
