"""The files a run grows piece by piece (``metrics.jsonl``, TensorBoard event files, validation images) when its
workdir is a bucket.

A GCS object cannot be appended to: rewriting ``metrics.jsonl`` or an event file on every log line would upload
the whole file each time (tensorboardX's own GCS writer does exactly that on each flush). So these files are
written to a local folder and copied up at each checkpoint and at the end: a file whose size or modification time
changed since the last upload goes up whole, once. The TensorBoard writer closes its event file before each upload
and the next event opens a new one, so every event byte is uploaded once; TensorBoard reads all event files of a
folder as one log.

For a local workdir the local folder is the workdir itself and :meth:`WorkdirMirror.sync` does nothing. The bucket
copy is as fresh as the last checkpoint, which is what a resumed run continues from: it first downloads
``metrics.jsonl`` and appends after the rows already there. The local folder of a killed run stays in the system's
temporary folder (``TMPDIR``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from xpsr_jax import paths

# downloaded on start so a resumed run appends to it; event files and images are new files on each run
CONTINUED = ("metrics.jsonl",)


class WorkdirMirror:
    """``local``: the folder to write in; ``remote``: the gs:// workdir it is copied to (None when local)."""

    def __init__(self, workdir: str | os.PathLike):
        workdir = paths.as_path(workdir)
        if isinstance(workdir, Path):
            self.local, self.remote = workdir, None
            self.local.mkdir(parents=True, exist_ok=True)
            return
        self.remote = workdir
        self.local = Path(tempfile.mkdtemp(prefix="xpsr-run-"))
        for name in CONTINUED:
            if (workdir / name).exists():
                with (workdir / name).open("rb") as fin, open(self.local / name, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
        self._uploaded = {p: _signature(p) for p in self._files()}

    def sync(self) -> list[str]:
        """Upload the files that are new or changed since the last call; -> their paths relative to the workdir."""
        if self.remote is None:
            return []
        done = []
        for path in self._files():
            sig = _signature(path)
            if self._uploaded.get(path) == sig:
                continue
            rel = path.relative_to(self.local).as_posix()
            target = self.remote / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            paths.upload_file(path, target)
            self._uploaded[path] = sig
            done.append(rel)
        return done

    def close(self) -> None:
        """Upload what is left and remove the local copy (a local workdir is left as it is)."""
        if self.remote is None:
            return
        self.sync()
        shutil.rmtree(self.local, ignore_errors=True)

    def _files(self) -> list[Path]:
        return sorted(p for p in self.local.rglob("*") if p.is_file())


def _signature(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns
