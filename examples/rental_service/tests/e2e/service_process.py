"""The rental service as a real child process: start, wait until it answers, stop, kill, restart.

Both the scripted scenario (``python -m examples.rental_service.scenario``) and the end-to-end
tests run the service this way, exactly as ``make serve`` does: ``python -m
examples.rental_service`` with its settings in the environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

import httpx

from cqrs_kit.testing import free_port

#: The repository root: the child runs from here so that ``-m examples.rental_service`` resolves.
REPO_ROOT = Path(__file__).resolve().parents[4]


class ServiceProcessError(RuntimeError):
    """The service did not start, answer or stop as expected; the message ends with its log."""


class ServiceProcess:
    """``python -m examples.rental_service`` in a child process, on a port of its own.

    Args:
        data_dir: The service's ``DATA_DIR``; its log file goes here too. Keep it to restart
            the service on the same data.
        mongodb_uri: The database to use. ``None`` leaves ``MONGODB_URI`` empty, so the
            service starts its own embedded server under ``data_dir``.
        settings: More environment variables for the service (``PAYMENT_TIMEOUT``, ...).
        port: HTTP port (a free one by default); kept across restarts.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        mongodb_uri: str | None = None,
        settings: Mapping[str, str] | None = None,
        port: int | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.mongodb_uri = mongodb_uri
        self.settings = dict(settings or {})
        self.port = port or free_port()
        self.log_path = data_dir / "service.log"
        self.starts = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log_start = 0

    @property
    def base_url(self) -> str:
        """Where the HTTP API answers."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The child's process id while it runs."""
        return self._process.pid if self._process is not None else None

    def environment(self) -> dict[str, str]:
        """The environment the child gets: ours, then the service's settings."""
        env = dict(os.environ)
        env.update(
            {
                "MONGODB_URI": self.mongodb_uri or "",
                "DATA_DIR": str(self.data_dir),
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "PYTHONUNBUFFERED": "1",
                # A restarted service waits this long for its dead predecessor's leases.
                "LEASE_TTL": "2",
            }
        )
        env.update(self.settings)
        return env

    def start(self, timeout: float = 60.0) -> ServiceProcess:
        """Start the child and return once it answers HTTP.

        Raises:
            ServiceProcessError: It exited, or did not answer within ``timeout`` seconds
                (it is killed then).
        """
        if self._process is not None:
            raise ServiceProcessError("the service is already running; stop or kill it first")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            self._log_start = log.tell()
            log.write(f"\n===== start {self.starts} on port {self.port} =====\n".encode())
            log.flush()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "examples.rental_service"],
                cwd=REPO_ROOT,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            self.wait_until_answering(timeout)
        except BaseException:
            self.kill()
            raise
        return self

    def wait_until_answering(self, timeout: float) -> None:
        """Poll the liveness probe (or the OpenAPI document) until it answers 200."""
        deadline = time.monotonic() + timeout
        paths = ["/health/live", "/openapi.json"]
        with httpx.Client(base_url=self.base_url, timeout=2.0) as client:
            while True:
                process = self._process
                if process is None or process.poll() is not None:
                    code = None if process is None else process.returncode
                    raise ServiceProcessError(self.failure(f"the service exited with {code}"))
                with contextlib.suppress(httpx.TransportError):
                    answer = client.get(paths[0])
                    if answer.status_code == 200:
                        return
                    if answer.status_code == 404 and len(paths) > 1:
                        paths.pop(0)  # no health routes mounted: fall back to /openapi.json
                        continue
                if time.monotonic() > deadline:
                    raise ServiceProcessError(
                        self.failure(f"the service did not answer within {timeout:.0f} s")
                    )
                time.sleep(0.05)

    def stop(self, timeout: float = 20.0) -> int | None:
        """Stop with SIGTERM; SIGKILL if it is still running after ``timeout`` seconds.

        Returns:
            The exit code (``None`` if it was not running).

        Raises:
            ServiceProcessError: SIGTERM was not enough (the child has been killed).
        """
        process = self._process
        if process is None:
            return None
        self._process = None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                return process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)
                self._kill_orphaned_server()
                raise ServiceProcessError(
                    self.failure(f"the service ignored SIGTERM for {timeout:.0f} s; killed it")
                ) from None
        return process.returncode

    def stop_cleanly(self, timeout: float = 20.0) -> None:
        """Stop with SIGTERM and check that this run of the service shut down cleanly.

        Raises:
            ServiceProcessError: It needed SIGKILL, exited with an error, did not finish
                its shutdown, or logged a traceback since it was last started.
        """
        code = self.stop(timeout)
        # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
        if code not in (0, -signal.SIGTERM):
            raise ServiceProcessError(self.failure(f"the service exited with {code}"))
        run = self.log_text()[self._log_start :]
        if "Application shutdown complete" not in run:
            raise ServiceProcessError(self.failure("the service did not finish its shutdown"))
        if "Traceback" in run:
            raise ServiceProcessError(self.failure("the service logged a traceback"))

    def kill(self) -> None:
        """Kill the child at once (SIGKILL), as a crash or an out-of-memory kill would.

        An embedded server the child left running is killed too.
        """
        process = self._process
        self._process = None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(10)
        self._kill_orphaned_server()

    def restart(self, *, kill: bool = False, timeout: float = 60.0) -> ServiceProcess:
        """Stop (or kill) the child and start it again on the same data and port."""
        if kill:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def log_text(self) -> str:
        """Everything the child wrote so far, over all its starts."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def failure(self, message: str, *, lines: int = 60) -> str:
        """``message`` followed by the last ``lines`` lines of the log."""
        tail = "\n".join(self.log_text().splitlines()[-lines:])
        return f"{message}; last lines of {self.log_path}:\n{tail}"

    def _kill_orphaned_server(self) -> None:
        # Without MONGODB_URI the service runs its own nx-27017 in a session of its own, so
        # a SIGKILL of the service leaves that server running. Its pid file is in our data
        # directory; the command-line check guards against a recycled pid.
        if self.mongodb_uri is not None:
            return
        for pid_file in self.data_dir.rglob("nx-*.pid"):
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"nx-27017" in cmdline and str(self.data_dir).encode() in cmdline:
                    os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.stop()
        else:
            # Already failing: do not hide that error behind a shutdown problem.
            with contextlib.suppress(ServiceProcessError):
                self.stop()


#: Builds a (not yet started) :class:`ServiceProcess`; the ``make_service`` fixture is one.
ServiceFactory = Callable[..., ServiceProcess]
