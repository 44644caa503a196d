"""Headless Chromium driven over the Chrome DevTools Protocol, through a pipe.

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and
write answers and events to descriptor 4, each message a JSON text ended by a NUL byte. That
needs no port, no WebSocket client and no browser-automation package: only the system's
``chromium`` (Debian's ``/usr/bin/chromium``; ``make browser`` installs it).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

#: Where Debian installs Chromium; ``$CHROMIUM`` overrides it.
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    """Chromium is missing, died, or answered a command with an error."""


def _high_fd(fd: int) -> int:
    # Move a pipe end above 2..4 so that the dup2 calls in the child cannot clobber it.
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return moved


class Browser:
    """One headless Chromium with a fresh profile, and its first tab.

    Use :func:`launch` rather than the constructor.
    """

    def __init__(self, process: subprocess.Popen[bytes], commands: int, profile: Path) -> None:
        self._process = process
        self._commands = commands
        self._profile = profile
        self._next_id = 0
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._transport: asyncio.ReadTransport | None = None
        self._session: str | None = None
        #: Uncaught page exceptions and console errors, for failure messages.
        self.page_errors: list[str] = []

    async def _start(self, answers: int) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
        pipe = os.fdopen(answers, "rb", buffering=0)
        self._transport, _ = await loop.connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(reader), pipe
        )
        self._reader_task = asyncio.create_task(self._read(reader))
        targets = await self.send("Target.getTargets")
        pages = [t for t in targets["targetInfos"] if t["type"] == "page"]
        if pages:
            target_id = pages[0]["targetId"]
        else:
            target_id = (await self.send("Target.createTarget", {"url": "about:blank"}))["targetId"]
        attached = await self.send(
            "Target.attachToTarget", {"targetId": target_id, "flatten": True}
        )
        self._session = attached["sessionId"]
        await self.send("Page.enable", session=True)
        await self.send("Runtime.enable", session=True)

    async def _read(self, reader: asyncio.StreamReader) -> None:
        error: BaseException = BrowserError("chromium closed its protocol pipe")
        try:
            while True:
                raw = await reader.readuntil(b"\0")
                message = json.loads(raw[:-1])
                if "id" in message:
                    future = self._pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        future.set_result(message)
                else:
                    self._note_event(message)
        except asyncio.IncompleteReadError:
            pass
        except Exception as exc:
            error = exc
        for future in self._pending.values():
            if not future.done():
                future.set_exception(error)
        self._pending.clear()

    def _note_event(self, message: dict[str, Any]) -> None:
        params = message.get("params", {})
        if message.get("method") == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            self.page_errors.append(f"uncaught: {text}")
        elif message.get("method") == "Runtime.consoleAPICalled" and params.get("type") == "error":
            args = [str(a.get("value", a.get("description", ""))) for a in params.get("args", [])]
            self.page_errors.append("console.error: " + " ".join(args))

    async def send(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        session: bool = False,
        within: float = 10.0,
    ) -> dict[str, Any]:
        """Send one protocol command and return its ``result``.

        Args:
            method: For example ``"Page.navigate"``.
            params: The command's parameters.
            session: Address the tab rather than the browser.
            within: Seconds to wait for the answer.

        Raises:
            BrowserError: The command failed or Chromium went away.
        """
        if self._process.poll() is not None:
            raise BrowserError(f"chromium exited with {self._process.returncode}")
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self._session
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[self._next_id] = future
        os.write(self._commands, json.dumps(message).encode() + b"\0")
        try:
            answer = await asyncio.wait_for(future, within)
        except TimeoutError:
            self._pending.pop(message["id"], None)
            raise BrowserError(f"{method}: no answer from chromium in {within} s") from None
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error']}")
        result: dict[str, Any] = answer.get("result", {})
        return result

    async def navigate(self, url: str, *, within: float = 20.0) -> None:
        """Open ``url`` in the tab and wait until its document has loaded."""
        # Mark the current document, so that the wait below cannot be satisfied by it.
        await self.evaluate("window.__leaving = true")
        answer = await self.send("Page.navigate", {"url": url}, session=True)
        if answer.get("errorText"):
            raise BrowserError(f"cannot open {url}: {answer['errorText']}")
        await self.wait_for(
            "!window.__leaving && document.readyState === 'complete'", within=within
        )

    async def evaluate(self, expression: str) -> Any:
        """Evaluate JavaScript in the page (awaiting a promise) and return its JSON value.

        Raises:
            BrowserError: The expression threw.
        """
        answer = await self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=True,
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression!r} threw: {text}")
        return answer.get("result", {}).get("value")

    async def wait_for(self, expression: str, *, within: float = 10.0) -> Any:
        """Evaluate ``expression`` until it is truthy; return that value.

        Raises:
            TimeoutError: Still falsy after ``within`` seconds; the message has the last
                value and the page's errors.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        value: Any = None
        while True:
            with contextlib.suppress(BrowserError):
                value = await self.evaluate(expression)
                if value:
                    return value
            if loop.time() > deadline:
                raise TimeoutError(
                    f"{expression!r} still {value!r} after {within} s; "
                    f"page errors: {self.page_errors or 'none'}"
                )
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Close Chromium (killing it if it does not go) and delete its profile."""
        with contextlib.suppress(BrowserError, OSError):
            await self.send("Browser.close", within=5.0)
        try:
            await asyncio.to_thread(self._process.wait, 10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            await asyncio.to_thread(self._process.wait, 10)
        with contextlib.suppress(OSError):
            os.close(self._commands)
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        if self._transport is not None:
            self._transport.close()
        shutil.rmtree(self._profile, ignore_errors=True)


def _spawn(log_path: Path | None) -> tuple[subprocess.Popen[bytes], int, int, Path]:
    """Start Chromium wired to two pipes; return it, our two pipe ends and its profile."""
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        raise BrowserError(
            f"{CHROMIUM} is missing: run `make browser` (apt-get install chromium) "
            "or point $CHROMIUM at a Chromium binary"
        )
    profile = Path(tempfile.mkdtemp(prefix="rental-e2e-chromium-"))
    to_browser_read, to_browser_write = os.pipe()
    from_browser_read, from_browser_write = os.pipe()
    child_commands, child_answers = _high_fd(to_browser_read), _high_fd(from_browser_write)

    def wire_pipes() -> None:  # runs in the child between fork and exec
        os.dup2(child_commands, 3)
        os.dup2(child_answers, 4)

    stderr = log_path.open("ab") if log_path is not None else subprocess.DEVNULL
    try:
        # close_fds=False keeps the dup2'ed descriptors 3 and 4; every other descriptor of
        # ours is close-on-exec already (PEP 446), so nothing else leaks into Chromium.
        process = subprocess.Popen(
            [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            close_fds=False,
            preexec_fn=wire_pipes,
        )
    except BaseException:
        for fd in (to_browser_write, from_browser_read):
            os.close(fd)
        shutil.rmtree(profile, ignore_errors=True)
        raise
    finally:
        os.close(child_commands)
        os.close(child_answers)
        if not isinstance(stderr, int):
            stderr.close()
    return process, to_browser_write, from_browser_read, profile


@contextlib.asynccontextmanager
async def launch(*, log_path: Path | None = None) -> AsyncIterator[Browser]:
    """Start headless Chromium on a fresh profile; yield it attached to its first tab.

    Args:
        log_path: Where Chromium's own stderr goes (discarded by default).

    Raises:
        BrowserError: ``CHROMIUM`` is not installed (run ``make browser``), or it does not
            answer.
    """
    process, commands, answers, profile = _spawn(log_path)
    browser = Browser(process, commands, profile)
    try:
        await asyncio.wait_for(browser._start(answers), 20.0)
    except BaseException:
        await browser.close()
        raise
    try:
        yield browser
    finally:
        await browser.close()
