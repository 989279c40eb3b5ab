"""A run's stage markers: ``RUN/state.json`` says which stages finished, when and with what result.

A stage is marked only after its outputs are complete, and the file is rewritten atomically, so a run killed at
any point restarts at the first unmarked stage; a marked stage is skipped. Stage names: ``train``, ``export``,
``sr/<test set>``, ``eval/<test set>``.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from xpsr_jax.files import atomic_write_json

STATE_FILE = "state.json"


class RunState:
    def __init__(self, folder: Path, run_id: str):
        self.folder = Path(folder)
        self.path = self.folder / STATE_FILE
        self.doc = {"run": run_id, "stages": {}}
        if self.path.is_file():
            self.doc = json.loads(self.path.read_text(encoding="utf-8"))

    @property
    def stages(self) -> dict[str, dict]:
        return self.doc["stages"]

    def done(self, stage: str) -> bool:
        return stage in self.stages

    def mark(self, stage: str, **info) -> None:
        """Record ``stage`` as finished (with ``info``, strict JSON) and write the file atomically."""
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        self.stages[stage] = {"finished": now, **info}
        self.folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(self.path, self.doc)
