"""Test harness: 8 fake CPU devices for mesh tests, exact fp32 matmuls for parity tests, and one XLA compilation
cache for the whole run.

All must be set before JAX is imported anywhere, which is why they live here. The cache is given through the
environment, so every subprocess a test starts (the demo, the multi-process runs, CLI runs) reads and fills the
same one: the tiny model of ``xpsr_jax.testing`` is trained by several of them, and its step compiles once. It
lives in ``.cache/jax-tests`` of the checkout (kept between runs, capped in size; delete it freely);
``JAX_COMPILATION_CACHE_DIR`` set beforehand names another.
"""

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # TPU compile-only tests: several processes may load libtpu
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".cache" / "jax-tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")  # small programs: cheaper to compile
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(4 << 30))  # least recently used entries go first
# an environment setting, not jax.config, so that subprocesses trace the same programs (the precision is part of them)
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")  # also where JAX was imported before this file

sys.path.insert(0, str(ROOT))


# Test files by how long they take (seconds on 2 idle cores, two workers, from `make test`'s per-file sums): with
# `-n 2 --dist loadfile --no-loadscope-reorder` each worker takes the next file in this order, so the long files
# start first and the short ones fill the gaps at the end (longest first; by default xdist would start the files
# with the most tests, and the two-process runs came last, alone on one worker, for 11 of the run's 24 minutes).
LONGEST_FIRST = ("test_train.py",  # ~300 s
                 "test_multihost.py",  # ~165
                 "test_xpsr_official.py", "test_demo.py", "test_infer.py",  # ~65-110 each
                 "test_infer_cli.py", "test_cached_latents.py", "test_xpsr_torch_ref.py", "test_unet.py")  # ~40


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.fail(f"the shared folder is expected beside the checkout at {SHARED}")
    return SHARED


@pytest.fixture(scope="session")
def official_tiny(shared_dir) -> Path:
    return shared_dir / "fixtures" / "official-tiny"


@pytest.fixture(scope="session")
def tiny_trainer():
    """The tiny preset's train step (``helpers.tiny_train_config``) compiled once for the whole run, on the
    8-device test mesh (data 4 x fsdp 2); its compiled program is the one the demo and the multi-process runs use."""
    from helpers import tiny_train_config
    from xpsr_jax.train import partition
    from xpsr_jax.train.trainer import create_trainer

    c = tiny_train_config()
    return create_trainer(c, partition.make_mesh(c.mesh.shape))
