"""A long-lived child process that runs one job at a time for a parent: :class:`LogWorker`.

The Arrow log writer hands it the conversion of a sealed WAL segment, which is pure Python
and would hold the serving process's GIL for seconds. The child is spawned (a fresh
interpreter, fork and exec: the parent has gRPC threads, so a plain fork is unsafe),
lazily, by the first job; the parent's thread waits on a socket, without the GIL.

It is spawned with :mod:`subprocess` rather than :mod:`multiprocessing`, whose "spawn" and
"forkserver" children import the parent's ``__main__`` again: a script without an
``if __name__ == "__main__"`` guard would run its top level (open an engine, serve) in
the worker. The child gets the parent's ``sys.path`` and interpreter flags, as
multiprocessing's would, and talks over a :class:`~multiprocessing.connection.Connection`.

A job is a picklable module-level function called in the child as
``job(*arguments, resolve=...)``; ``resolve(uid)`` asks the parent, which answers with its
own ``resolve`` (a capsule's install config: they live in the parent's engine). Records
the job logs on ``syntra.*`` loggers are logged again in the parent. What the job returns
or raises comes back to the caller; if the child dies instead, :meth:`LogWorker.run`
raises :class:`WorkerDied` and the next job starts a new child.
"""

from __future__ import annotations

import functools
import logging
import pickle
import socket
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from syntra.errors import SyntraError

log = logging.getLogger("syntra.store")

# How long a child that was asked to stop may take before it is killed.
_STOP_SECONDS = 5.0

# What the child runs: take sys.path from the parent before importing anything of ours.
_BOOT = (
    "import signal, sys\n"
    # Ctrl-C reaches the whole process group; the parent decides when this one stops.
    "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    "from multiprocessing.connection import Connection\n"
    "connection = Connection(int(sys.argv[1]))\n"
    "sys.path[:] = connection.recv()\n"
    "from syntra.store.logs.worker import _serve\n"
    "_serve(connection, *connection.recv())\n"
)


class WorkerDied(Exception):
    """The worker process ended (killed, crashed, could not start) before finishing a job.

    The job may have done part of its work; the caller does it again in its own process.
    """


class LogWorker:
    """Runs ``job`` calls in one child process, one at a time, for as long as it lives.

    ``job`` must be a module-level function (the child imports it by name). Thread-safe:
    concurrent :meth:`run` calls take turns. The child stops when the thread that started
    it ends (unless that is the main thread), on :meth:`close` (after which :meth:`run`
    raises :class:`WorkerDied`), or when this process exits (it reads end-of-file).
    """

    def __init__(self, job: Callable[..., Any], *, name: str = "syntra-log-worker"):
        self._job = job
        self._name = name
        self._lock = threading.Lock()
        self._process: subprocess.Popen | None = None
        self._connection: Connection | None = None
        self._closed = False
        self.jobs = 0  # jobs a child finished (returned or raised), for tests and metrics

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called: no child will start again."""
        return self._closed

    @property
    def pid(self) -> int | None:
        """The process id of the running child, or None when there is none."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def run(self, arguments: tuple, resolve: Callable[[int], Any]) -> Any:
        """``job(*arguments, resolve=...)`` in the child: return what it returns, raise
        what it raises. Raises :class:`WorkerDied` if the child dies or cannot start."""
        with self._lock:
            if self._closed:
                raise WorkerDied(f"the {self._name} process was shut down")
            connection = self._started()
            try:
                connection.send(("job", arguments))
                outcome, value = self._serve_until_done(connection, resolve)
            except BaseException as exc:
                # Dead, or out of step (a message that would not pickle): either way this
                # child cannot be trusted with the next job.
                why = self._reap(f"{type(exc).__name__}: {exc}" if str(exc)
                                 else type(exc).__name__)
                if isinstance(exc, Exception):
                    raise WorkerDied(why) from None
                raise
            self.jobs += 1
        if outcome == "failed":
            raise value
        return value

    def close(self) -> None:
        """Stop the child (after the job it is running, if any). Idempotent."""
        with self._lock:
            self._closed = True
            self._stop()

    def _stop(self) -> None:
        """Ask the idle child to exit, and kill it if it does not; the caller holds the lock."""
        if self._process is None:
            return
        try:
            self._connection.send(None)
            self._process.wait(_STOP_SECONDS)
        except (OSError, subprocess.TimeoutExpired):
            pass  # gone already, or killed below
        self._reap("shut down")

    def _started(self) -> Connection:
        """The connection to a live child, starting one if there is none (or it died idle)."""
        if self._process is not None and self._process.poll() is not None:
            log.warning("%s", self._reap("it died while idle"))
        if self._process is None:
            ours, theirs = socket.socketpair()
            connection = Connection(ours.detach())
            try:
                # The interpreter flags (-X, -W, -O...) as multiprocessing passes them on.
                process = subprocess.Popen(
                    [sys.executable, *subprocess._args_from_interpreter_flags(), "-c", _BOOT,
                     str(theirs.fileno())],
                    pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
            except Exception as exc:  # noqa: BLE001 (no process, no job: the caller falls back)
                connection.close()
                raise WorkerDied(f"cannot start the {self._name} process: {exc}") from None
            finally:
                theirs.close()  # so the child's death reads as end-of-file here
            self._process, self._connection = process, connection
            try:
                connection.send(sys.path)
                connection.send((self._job, logging.getLogger("syntra").getEffectiveLevel()))
            except Exception as exc:  # noqa: BLE001 (a job that does not pickle, a dead child)
                raise WorkerDied(self._reap(f"cannot start it: {exc}")) from None
            starter = threading.current_thread()
            if starter is not threading.main_thread():
                threading.Thread(target=self._stop_after, args=(starter, process), daemon=True,
                                 name=f"{self._name}-watch").start()
        return self._connection

    def _stop_after(self, starter: threading.Thread, process) -> None:
        """Stop ``process`` once the thread that started it ends (for the log writer, the
        WAL's seal-delivery thread, which ends when the store closes)."""
        starter.join()
        with self._lock:
            if self._process is process:
                self._stop()

    def _serve_until_done(self, connection: Connection,
                          resolve: Callable[[int], Any]) -> tuple[str, Any]:
        """Answer the child's lookups and relay its log records until the job ends."""
        while True:
            message = connection.recv()  # blocks without the GIL
            kind = message[0]
            if kind == "resolve":
                connection.send(_answer(resolve, message[1]))
            elif kind == "log":
                _, name, level, text = message
                logging.getLogger(name).log(level, "%s", text)
            else:
                return kind, message[1]

    def _reap(self, why: str) -> str:
        """Make sure the child is gone and forget it; return what to tell the caller."""
        process, self._process = self._process, None
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if process is None:
            return f"the {self._name} process is gone: {why}"
        if process.poll() is None:
            process.kill()
        process.wait()
        return (f"the {self._name} process (pid {process.pid}) ended with exit code"
                f" {process.returncode}: {why}")


def _answer(resolve: Callable[[int], Any], uid: int) -> tuple[str, Any]:
    try:
        return "value", resolve(uid)
    except KeyError:
        return "missing", None
    except Exception as exc:  # noqa: BLE001 (it goes to the job, as in the parent)
        return "raise", _sendable(exc)


def _sendable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling, else a SyntraError that says what it was."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 (any class that does not round-trip)
        return SyntraError(f"{type(exc).__qualname__}: {exc}")


# --- in the child ------------------------------------------------------------------------


class _Forward(logging.Handler):
    """Sends every record to the parent, which logs it under the same logger name."""

    def __init__(self, connection: Connection):
        super().__init__()
        self._connection = connection

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._connection.send(("log", record.name, record.levelno, self.format(record)))
        except Exception:  # noqa: BLE001 (a lost log line must not fail the job)
            self.handleError(record)


def _serve(connection: Connection, job: Callable[..., Any], level: int) -> None:
    """The child's loop: run each job sent until told to stop or the parent goes away."""
    root = logging.getLogger("syntra")
    root.setLevel(level)
    root.addHandler(_Forward(connection))
    root.propagate = False

    def resolve(uid: int) -> Any:
        connection.send(("resolve", uid))
        outcome, value = connection.recv()
        if outcome == "missing":
            raise KeyError(uid)
        if outcome == "raise":
            raise value
        return value

    while True:
        try:
            message = connection.recv()
        except EOFError:  # the parent is gone
            return
        if message is None:
            return
        _, arguments = message
        try:
            # A fresh cache each job: the parent is asked once per capsule, not per record.
            reply = ("done", job(*arguments, resolve=functools.cache(resolve)))
        except Exception as exc:  # noqa: BLE001 (it is the caller's to handle)
            if not isinstance(exc, SyntraError):
                exc.add_note("in the log worker process:\n" + traceback.format_exc())
            reply = ("failed", _sendable(exc))
        connection.send(reply)
