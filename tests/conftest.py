"""Test harness: 8 fake CPU devices for mesh tests and exact fp32 matmuls for parity tests.

Both must be set before JAX is imported anywhere, which is why they live here.
"""

import os
import sys
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # TPU compile-only tests: several processes may load libtpu
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared folder is expected beside the checkout at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def official_tiny(shared_dir) -> Path:
    return shared_dir / "fixtures" / "official-tiny"
