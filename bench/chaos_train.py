"""Resume under fire: SIGKILL a tiny training run at random moments, resume it each time, and check that it still
gives the uninterrupted run's losses, exactly, losing only the steps since its last finished checkpoint.

The run is ``xpsr-jax train --config tiny`` on the 8-device CPU mesh (data 4 x fsdp 2), synthetic data. First an
uninterrupted reference run, then the chaos run in its own workdir, killed ``--kills`` times at moments drawn from
``--seed``, of three kinds:

- ``step``: a random time into a random step of the next three checkpoint intervals after the resume (the train
  step or the next batch is running);
- ``checkpoint``: in one of the next three saves after the resume, shortly after orbax created the step's
  temporary folder (``<step>.orbax-checkpoint-tmp-*``), while the asynchronous write of the state runs; whether
  the kill really landed before the step was finalised is recorded (``in_window``);
- ``data``: in one of the next three saves, as soon as the data item's folder appears inside the temporary step
  folder, while the iterator's state file is (or is about to be) written.

After each kill the same command is started again; it must resume from the latest finished checkpoint. Every loss
row the chaos run writes (``metrics.jsonl``, killed processes' rows included) is compared with the reference row of
the same step, bit for bit. Every process shares one persistent compilation cache, so restarts do not compile.

Prints (and appends to ``--out``) one JSON object per run and per kill, then a summary:

    python bench/chaos_train.py --out bench/results/chaos-cpu.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MESH = "(('data', 4), ('fsdp', 2))"
TMP_MARK = ".orbax-checkpoint-tmp"
KINDS = ("step", "checkpoint", "data")
# a kill may let up to this many checkpoints finish after the resume first, so that the run moves on between kills
# (aiming every kill at the first save after the resume killed every save of one run: ten resumes from step 0)
MAX_SAVES_PASSED = 2


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=72, help="length of the run (enough for every kill to land)")
    ap.add_argument("--checkpoint-every", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0, help="draws the kill moments")
    ap.add_argument("--workdir", type=Path, help="default: a temporary folder, removed at the end")
    ap.add_argument("--out", type=Path, help="append the JSON lines here too")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds one process may take")
    ap.add_argument("--keep-reference", action="store_true",
                    help="reuse a finished reference run in --workdir (same steps; the code must not have changed "
                         "the step)")
    args = ap.parse_args()

    keep = args.workdir is not None
    root = args.workdir or Path(tempfile.mkdtemp(prefix="xpsr-chaos-"))
    root.mkdir(parents=True, exist_ok=True)
    env = child_env(root / "jax-cache")
    emit = Emitter(args.out)
    rng = random.Random(args.seed)
    try:
        ref_dir = root / "reference"
        ref = Run(ref_dir, args, env)
        reference = {r["step"]: r["loss"] for r in ref.rows()} if args.keep_reference else {}
        if sorted(reference) == list(range(1, args.steps + 1)):
            emit({"what": "chaos_reference", "reused": str(ref_dir), "steps": args.steps,
                  "final_loss": reference[args.steps]})
            return run_chaos(root, args, env, emit, rng, reference)
        shutil.rmtree(ref_dir, ignore_errors=True)
        t0 = time.perf_counter()
        ref.start()
        first = ref.wait_for_row(lambda rows: bool(rows), args.timeout)
        code = ref.wait(args.timeout)
        reference = {r["step"]: r["loss"] for r in ref.rows()}
        if code != 0 or sorted(reference) != list(range(1, args.steps + 1)):
            emit({"what": "chaos_reference", "error": f"exit {code}", "log": ref.log_tail()})
            return 1
        emit({"what": "chaos_reference", "steps": args.steps, "checkpoint_every": args.checkpoint_every,
              "seconds_to_first_step": round(first, 2), "seconds": round(time.perf_counter() - t0, 2),
              "final_loss": reference[args.steps]})
        return run_chaos(root, args, env, emit, rng, reference)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def run_chaos(root: Path, args, env: dict, emit, rng: random.Random, reference: dict) -> int:
    kinds = [KINDS[i % 3] for i in range(args.kills)]
    rng.shuffle(kinds)
    chaos_dir = root / "chaos"
    shutil.rmtree(chaos_dir, ignore_errors=True)
    run = Run(chaos_dir, args, env)
    kills = []
    for i, kind in enumerate(kinds):
        record = run.kill_once(i, kind, rng, args.timeout)
        kills.append(record)
        emit(record)
        if record.get("error"):
            return 1
    final = run.finish(args.timeout)
    emit(final)
    emit(summarize(kills, final, run, reference, args))
    return 0


def child_env(cache: Path) -> dict:
    """8 fake CPU devices and one persistent compilation cache for every process (an inherited
    ``JAX_COMPILATION_CACHE_DIR`` wins, as in the tests)."""
    env = dict(os.environ)
    env.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(cache))
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    env["PYTHONUNBUFFERED"] = "1"
    return env


class Emitter:
    def __init__(self, out: Path | None):
        self.out = out
        if out:
            out.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, obj: dict) -> None:
        line = json.dumps({**obj, "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        print(line, flush=True)
        if self.out:
            with open(self.out, "a") as f:
                f.write(line + "\n")


class Run:
    """One workdir, trained by a succession of ``xpsr-jax train`` processes."""

    def __init__(self, workdir: Path, args, env: dict):
        self.workdir, self.args, self.env = workdir, args, env
        self.ckpt_dir = workdir / "checkpoints"
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.row_offsets: list[int] = []  # metrics.jsonl size when each process started

    # --- processes -------------------------------------------------------------------------------------------
    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.row_offsets.append(len(self.rows()))
        self.starts += 1
        cmd = [sys.executable, "-m", "xpsr_jax.cli", "train", "--config", "tiny", f"--config.mesh.shape={MESH}",
               "--workdir", str(self.workdir), f"--config.num_train_steps={self.args.steps}",
               f"--config.checkpoint_every={self.args.checkpoint_every}"]
        log = open(self.workdir / f"process-{self.starts}.log", "w")
        self.started_at = time.perf_counter()
        self.started_wall = time.time() - 1.0  # file times have coarse granularity on some filesystems
        # its own session, so the kill reaches every process it started (and nothing else)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def log_tail(self, n: int = 2000) -> str:
        return (self.workdir / f"process-{self.starts}.log").read_text(errors="replace")[-n:]

    # --- what the run wrote -------------------------------------------------------------------------------------
    def rows(self) -> list[dict]:
        path = self.workdir / "metrics.jsonl"
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"step": None, "bad_line": line[:200]})
        return out

    def new_rows(self) -> list[dict]:
        return self.rows()[self.row_offsets[-1]:]

    def finished_steps(self) -> list[int]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(int(p.name) for p in self.ckpt_dir.iterdir() if p.name.isdigit())

    def temporary(self) -> list[str]:
        if not self.ckpt_dir.is_dir():
            return []
        return sorted(p.name for p in self.ckpt_dir.iterdir() if TMP_MARK in p.name)

    def fresh_temporary(self, prefix: str) -> list[str]:
        """Temporary folders named ``prefix...`` that this process made: orbax reuses a step's temporary name, so
        one left by a killed process differs only by its age."""
        out = []
        for name in self.temporary():
            try:
                if name.startswith(prefix) and (self.ckpt_dir / name).stat().st_ctime >= self.started_wall:
                    out.append(name)
            except OSError:  # removed while looking
                pass
        return out

    def wait_for_row(self, done, timeout: float, poll: float = 0.05) -> float:
        """Seconds since the process started until ``done(new rows)``; raises if it exits or times out first."""
        while True:
            rows = self.new_rows()
            if done(rows):
                return time.perf_counter() - self.started_at
            if self.proc.poll() is not None:
                raise ChildExited(f"exit {self.proc.returncode} before the awaited step")
            if time.perf_counter() - self.started_at > timeout:
                raise ChildExited("timed out")
            time.sleep(poll)

    # --- one kill -------------------------------------------------------------------------------------------------
    def kill_once(self, i: int, kind: str, rng: random.Random, timeout: float) -> dict:
        before = self.finished_steps()
        resume_from = before[-1] if before else 0
        stale = self.temporary()
        self.start()
        k = self.args.checkpoint_every
        record = {"what": "chaos_kill", "kill": i + 1, "kind": kind, "resume_expected_from": resume_from,
                  "stale_temporary_before": stale}
        try:
            first = self.wait_for_row(lambda rows: bool(rows), timeout)
            record["seconds_to_first_step"] = round(first, 2)
            record["resumed_from"] = self.resumed_step()
            if kind == "step":
                # any moment between two logged steps that are not checkpoint steps: a step or a batch is running
                target = resume_from + rng.randint(1, (1 + MAX_SAVES_PASSED) * k)
                if target % k == 0:
                    target += 1
                target = min(target, self.args.steps - 1)
                self.wait_for_row(lambda rows: any(r.get("step") == target for r in rows), timeout)
                step_seconds = self.step_seconds()
                time.sleep(rng.uniform(0.05, 0.95) * step_seconds)
                self.kill()
            else:
                save_at = (resume_from // k + 1 + rng.randint(0, MAX_SAVES_PASSED)) * k
                save_at = min(save_at, (self.args.steps - 1) // k * k)  # the last save before the final one
                if save_at <= resume_from:
                    raise ChildExited(f"no checkpoint left to hit before step {self.args.steps}")
                self.wait_for_row(lambda rows: any(r.get("step") == save_at - 1 for r in rows), timeout)
                seen, delay = self.hit_save(save_at, kind, rng, timeout)
                record.update(seen)
                record["kill_delay_ms"] = round(delay * 1e3, 2)
        except ChildExited as e:
            record["error"] = str(e)
            record["log"] = self.log_tail()
            return record
        rows = [r for r in self.new_rows() if r.get("step") is not None]
        last = rows[-1]["step"] if rows else resume_from
        after = self.finished_steps()
        record.update({"last_logged_step": last, "finished_checkpoints_after": after,
                       "temporary_after": self.temporary(),
                       "steps_lost": last - (after[-1] if after else 0)})
        if kind != "step":
            record["save_hit"] = save_at
            record["in_window"] = save_at not in after  # the kill landed before orbax finalised the step
        return record

    def hit_save(self, save_at: int, kind: str, rng: random.Random, timeout: float):
        """Poll tightly for the save of ``save_at``; kill inside it. Returns what was seen and the delay used."""
        prefix = f"{save_at}{TMP_MARK}"
        deadline = time.perf_counter() + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise ChildExited(f"exit {self.proc.returncode} before the save of step {save_at}")
            fresh = self.fresh_temporary(prefix)
            if (self.ckpt_dir / str(save_at)).exists():
                self.kill()  # finalised before the poll saw it: the window was missed
                return {"saw": "finalised"}, 0.0
            if fresh:
                tmp = self.ckpt_dir / fresh[0]
                if kind == "checkpoint":
                    delay = rng.uniform(0, 0.03)
                    time.sleep(delay)
                    self.kill()
                    return {"saw": fresh[0]}, delay
                items = [p.name for p in _listdir(tmp) if p.name.startswith("data")]
                if items:
                    self.kill()
                    files = [p.name for p in _listdir(tmp / items[0])]
                    return {"saw": f"{fresh[0]}/{items[0]}", "data_files_at_kill": files}, 0.0
            time.sleep(0.0005)
        raise ChildExited(f"no save of step {save_at} seen")

    def resumed_step(self) -> int:
        text = (self.workdir / f"process-{self.starts}.log").read_text(errors="replace")
        found = re.findall(r"resumed from step (\d+)", text)
        return int(found[-1]) if found else 0

    def step_seconds(self) -> float:
        """Typical seconds per step of this process (from its logged throughput)."""
        rows = [r for r in self.new_rows() if "img_per_s" in r]
        per = sorted(8 / r["img_per_s"] for r in rows[-4:]) or [1.0]
        return per[len(per) // 2]

    def finish(self, timeout: float) -> dict:
        before = self.finished_steps()
        self.start()
        code = self.wait(timeout)
        return {"what": "chaos_final_process", "exit": code, "resume_expected_from": before[-1] if before else 0,
                "resumed_from": self.resumed_step(), "finished_checkpoints": self.finished_steps(),
                "temporary_left": self.temporary()}


class ChildExited(RuntimeError):
    pass


def _listdir(path: Path) -> list[Path]:
    try:
        return list(path.iterdir())
    except OSError:  # renamed or removed while looking
        return []


def summarize(kills: list[dict], final: dict, run: Run, reference: dict, args) -> dict:
    """Per process: were all its loss rows the reference's, bit for bit? Did each resume start at the latest
    finished checkpoint (so that only the steps since it were lost)?"""
    rows = run.rows()
    bounds = run.row_offsets + [len(rows)]
    per_process = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        segment = rows[a:b]
        per_process.append(all(r.get("step") in reference and r["loss"] == reference[r["step"]] for r in segment))
    resumes = kills[1:] + [final]  # the first chaos process starts fresh; each later one is a resume
    right_start = [r["resumed_from"] == r["resume_expected_from"] for r in resumes]
    logged = {r["step"] for r in rows if r.get("step") is not None}
    return {
        "what": "chaos_summary", "kills": len(kills), "by_kind": {k: sum(r["kind"] == k for r in kills) for k in KINDS},
        "save_kills_in_window": sum(bool(r.get("in_window")) for r in kills if r["kind"] != "step"),
        "resumes": len(resumes),
        "resumes_exact": sum(ok and start for ok, start in zip(per_process[1:], right_start)),
        "resumed_from_latest_checkpoint": sum(right_start),
        "rows_checked": len(rows), "rows_different": sum(
            not (r.get("step") in reference and r["loss"] == reference[r["step"]]) for r in rows),
        "every_step_logged": logged == set(reference),
        "final_exit": final["exit"], "final_loss_equal": any(
            r.get("step") == args.steps and r["loss"] == reference[args.steps] for r in rows[bounds[-2]:]),
        "steps_lost": [r["steps_lost"] for r in kills], "steps_lost_total": sum(r["steps_lost"] for r in kills),
        "temporary_left": final["temporary_left"],
        "seconds_to_first_step_on_resume": sorted(r["seconds_to_first_step"] for r in kills[1:]),
    }


if __name__ == "__main__":
    sys.exit(main())
