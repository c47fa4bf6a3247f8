"""Groups of local processes for the multi-device and multi-process tests: run them together,
fail fast (and kill the rest) when one fails or hangs, and pick free localhost ports."""

import socket
import subprocess
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
Job = tuple[list[str], dict[str, str]]  # (command line, environment)


def run_together(jobs: list[Job], log_dir: Path, timeout_s: float) -> None:
    """Runs `jobs` concurrently from the repository root, each logging to
    `log_dir/process{i}.log`; every one must exit 0 within `timeout_s` seconds. All are killed
    when one fails or time runs out, so a hang or crash fails the test instead of blocking it."""
    log_dir.mkdir(parents=True, exist_ok=True)
    logs = [log_dir / f"process{i}.log" for i in range(len(jobs))]
    procs = []
    try:
        for (command, env), log in zip(jobs, logs, strict=True):
            with open(log, "w") as stream:
                procs.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=stream,
                                              stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout_s
        while any(proc.poll() is None for proc in procs):
            failed = [i for i, proc in enumerate(procs) if proc.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                index = failed[0] if failed else 0
                what = f"process {index} failed" if failed else f"timed out after {timeout_s} s"
                raise AssertionError(f"{what}:\n{logs[index].read_text()[-5000:]}")
            time.sleep(0.2)
        for index, proc in enumerate(procs):
            assert proc.returncode == 0, f"process {index} failed:\n{logs[index].read_text()}"
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
