"""How attention calls pick their kernel, as a value (no JAX import: settings and command lines build it).

The choosing itself is in :mod:`xpsr_jax.nn.attention`.
"""

from __future__ import annotations

import dataclasses

IMPLS = ("auto", "xla", "cudnn", "splash")
DEFAULT_SPLASH_MIN_LENGTH = 1024


@dataclasses.dataclass(frozen=True)
class AttentionImpl:
    """How attention calls pick their kernel: ``impl`` (one of ``IMPLS``) and the splash length threshold.

    Hashable, so it can be a flax module attribute wherever an impl name is accepted."""

    impl: str = "auto"
    splash_min_length: int = DEFAULT_SPLASH_MIN_LENGTH

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"attention impl must be one of {IMPLS}, got {self.impl!r}")
        if self.splash_min_length < 1:
            raise ValueError(f"splash_min_length must be positive, got {self.splash_min_length}")

    @classmethod
    def of(cls, impl: "str | AttentionImpl") -> "AttentionImpl":
        return impl if isinstance(impl, AttentionImpl) else cls(impl)
