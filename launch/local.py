#!/usr/bin/env python
"""Run one command as N local JAX processes (a multi-host run on one machine, CPU devices; the tests use it).

    python launch/local.py --num-processes 2 -- xpsr-jax train --config tiny --workdir runs/mh

Each process gets --coordinator/--num-processes/--process-id appended and its own log file
(WORKDIR_LOGS/process_I.log); the launcher waits for all, and if one fails it stops the others and exits non-zero.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=1, help="fake CPU devices per process")
    p.add_argument("--logs", type=Path, default=Path("runs/local-logs"))
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    args = p.parse_args(argv)
    cmd = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    if not cmd:
        p.error("give the command after --")
    args.logs.mkdir(parents=True, exist_ok=True)
    coordinator = f"127.0.0.1:{free_port()}"
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={args.devices_per_process}")
    procs = []
    for i in range(args.num_processes):
        log = open(args.logs / f"process_{i}.log", "w")
        full = cmd + ["--coordinator", coordinator, "--num-processes", str(args.num_processes), "--process-id", str(i)]
        procs.append((subprocess.Popen(full, env=env, stdout=log, stderr=subprocess.STDOUT), log))
    deadline = time.time() + args.timeout
    code = 0
    while procs and time.time() < deadline:
        for proc, log in list(procs):
            rc = proc.poll()
            if rc is None:
                continue
            procs.remove((proc, log))
            log.close()
            if rc != 0:
                code = rc
                for other, _ in procs:  # one failed: the collectives of the others would hang
                    other.terminate()
        time.sleep(0.2)
    for proc, log in procs:
        proc.kill()
        log.close()
        code = code or 124
    print(f"logs in {args.logs}/process_*.log; exit code {code}")
    return code


if __name__ == "__main__":
    sys.exit(main())
