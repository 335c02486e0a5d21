"""Run a writer script in a child process and kill -9 it: what the crash tests share."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path


def run_and_kill(script: Path, path: Path, delay: float, fields: int) -> list[str]:
    """Start ``script path``, wait for its READY line, let it run ``delay`` seconds, SIGKILL
    it, and return the lines it printed that have ``fields`` space-separated fields (the
    last line may be cut mid-write by the kill)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    child = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=env, text=True)
    try:
        ready = child.stdout.readline().strip()
        if ready != "READY":
            child.kill()
            raise AssertionError(f"the writer did not start: {ready!r} {child.communicate(timeout=30)[1]}")
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    return [line for line in out.splitlines() if line.count(" ") == fields - 1]
