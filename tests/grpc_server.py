"""A real ``syntra serve`` process for end-to-end tests, on 127.0.0.1 with free ports.

    with ServerProcess(tmp_path / "data") as server:
        channel = grpc.insecure_channel(server.address)
        ... metadata=server.admin_metadata ...

The server always stops: ``__exit__`` terminates it (SIGTERM, then SIGKILL after a grace
period), and ``kill()`` SIGKILLs it for crash tests; ``start()`` starts it again on the same
data directory.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Self

_READY = re.compile(r"listening on (\S+):(\d+)(?:, ops http://(\S+):(\d+))?")
START_TIMEOUT = 60.0


class ServerProcess:
    def __init__(self, data: Path, *, args: tuple[str, ...] = (), admin_key: str | None = None,
                 durability: str = "fsync"):
        self.data = Path(data)
        self.args = tuple(args)
        self.admin_key = admin_key or "test-admin-" + secrets.token_hex(24)
        self.durability = durability
        self.process: subprocess.Popen | None = None
        self.address = ""
        self.ops_address = ""
        self.stderr_lines: list[str] = []

    @property
    def admin_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.admin_key}"),)

    def start(self) -> Self:
        env = dict(os.environ, SYNTRA_ADMIN_KEY=self.admin_key, PYTHONUNBUFFERED="1")
        command = [sys.executable, "-m", "syntra", "serve", "--data", str(self.data),
                   "--listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0",
                   "--durability", self.durability, *self.args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                        env=env, text=True)
        self.stderr_lines = []
        drain = threading.Thread(target=self._drain_stderr, args=(self.process,), daemon=True)
        drain.start()
        line = self._read_ready()
        match = _READY.search(line)
        if match is None:
            self.kill()
            raise AssertionError(f"the server did not start: {line!r}\n" + "".join(self.stderr_lines[-30:]))
        self.address = f"{match.group(1)}:{match.group(2)}"
        self.ops_address = f"{match.group(3)}:{match.group(4)}" if match.group(3) else ""
        return self

    def _read_ready(self) -> str:
        result: list[str] = []
        reader = threading.Thread(target=lambda: result.append(self.process.stdout.readline()), daemon=True)
        reader.start()
        reader.join(START_TIMEOUT)
        return result[0] if result else ""

    def _drain_stderr(self, process) -> None:
        for line in process.stderr:
            self.stderr_lines.append(line)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful shutdown path. Returns the exit code."""
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError("the server did not stop within its grace period") from None

    def kill(self) -> None:
        """SIGKILL: the crash path."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        try:
            self.terminate()
        finally:
            self.kill()
