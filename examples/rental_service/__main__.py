"""``python -m examples.rental_service``: run the rental service (see its README)."""

from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

from examples.rental_service.app import database_uri, serve
from examples.rental_service.settings import Settings

log = logging.getLogger("rental_service")


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: unwind, stopping everything on the way out."""


def _request_stop(signum: int, frame: FrameType | None) -> None:
    raise StopRequested(signal.Signals(signum).name)


def main() -> None:
    """Read the settings, start the database if needed, and serve until SIGINT or SIGTERM."""
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # uvicorn handles both signals while it serves (a graceful HTTP shutdown, which also
    # stops the background parts), then re-raises the signal it got. These handlers turn
    # that, or a signal during start-up, into an exception, so that the embedded database
    # server is stopped on the way out instead of the process dying with it still running.
    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    try:
        with database_uri(settings) as uri:
            asyncio.run(serve(settings, uri))
    except StopRequested as stop:
        log.info("stopped (%s)", stop)


if __name__ == "__main__":
    main()
