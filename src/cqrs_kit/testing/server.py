"""Run an ``nx-27017`` server (MongoDB wire protocol over SQLite) as a child process.

Used by the test fixtures and by applications that want an embedded database
when no ``MONGODB_URI`` is configured. Every instance gets its own port, pid
file and log file, so several can run side by side.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from cqrs_kit.errors import CqrsKitError


class EmbeddedServerError(CqrsKitError):
    """The embedded server could not be started."""


def free_port() -> int:
    """Return a TCP port on the loopback interface that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _executable() -> list[str]:
    exe = shutil.which(
        "nx-27017", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
    )
    if exe is None:
        raise EmbeddedServerError(
            "the nx-27017 command is not installed; install cqrs-kit's dev extra "
            "(pip install 'cqrs-kit[dev]') or set MONGODB_URI"
        )
    return [exe]


class EmbeddedServer:
    """An ``nx-27017`` child process listening on ``127.0.0.1``.

    Args:
        db_path: SQLite file to keep data in, or ``"memory"``.
        port: Port to listen on (a free one by default).
        workdir: Where pid and log files go (a temporary directory by default).
    """

    def __init__(
        self,
        db_path: str | Path = "memory",
        *,
        port: int | None = None,
        workdir: Path | None = None,
    ) -> None:
        self.db_path = str(db_path)
        self.port = port or free_port()
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="cqrs-kit-nx-"))
        self.log_file = self.workdir / f"nx-{self.port}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        """Connection string for a driver."""
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process else None

    def start(self, timeout: float = 30.0) -> EmbeddedServer:
        """Start the server and wait until it accepts connections."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [
            *_executable(),
            "--db", self.db_path,
            "-p", str(self.port),
            "--host", "127.0.0.1",
            "--pid-file", str(self.workdir / f"nx-{self.port}.pid"),
            "--log-file", str(self.log_file),
        ]  # fmt: skip
        self._process = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise EmbeddedServerError(
                    f"nx-27017 exited with code {self._process.returncode}; see {self.log_file}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2),
            ):
                return self
            time.sleep(0.05)
        self.stop()
        raise EmbeddedServerError(f"nx-27017 did not listen on port {self.port} in {timeout}s")

    def kill(self) -> None:
        """Kill the server abruptly (SIGKILL), as a crash would."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait(10)
        self._process = None

    def stop(self) -> None:
        """Stop the server and wait for it to exit."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(10)
        self._process = None

    def cleanup(self) -> None:
        """Stop the server and remove its temporary files."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> EmbeddedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
