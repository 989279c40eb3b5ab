"""The GCS emulator as pytest fixtures, for the test modules that talk to a bucket: ``emulator`` starts
tests/gcs_emulator.py on a free port of 127.0.0.1 once per module, ``gcs_env`` points this process and its children
at it. Import both names into a test module to use them."""

import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BUCKET = "bucket"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator():
    """``http://127.0.0.1:PORT`` of a fresh in-memory GCS emulator with ``bucket``; stopped afterwards."""
    port = _free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests/gcs_emulator.py"), str(port), BUCKET],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready", "the GCS emulator did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def gcs_env(emulator, monkeypatch):
    """This process and its children talk to the emulator (restored after the test)."""
    env = {"STORAGE_EMULATOR_HOST": emulator, "TENSORSTORE_GCS_HTTP_URL": emulator,
           "CLOUD_STORAGE_EMULATOR_ENDPOINT": emulator,
           # gcsfs's probe for hierarchical buckets needs real credentials; the emulator has flat buckets only
           "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env
