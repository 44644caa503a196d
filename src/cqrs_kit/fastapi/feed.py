"""A live feed of the event log as Server-Sent Events.

``GET /events`` answers ``text/event-stream`` and keeps the connection open:
every event after the starting position is sent as one SSE message whose
``id`` is the event's global position and whose ``data`` is the event as JSON
(``RecordedEvent.to_document()``; metadata only when the router is built
with ``include_metadata=True``):

    retry: 2000

    id: 42
    data: {"id":"...","type":"shop.OrderPlaced","stream_id":"order-7","version":1,...}

    : keep-alive

The start is ``?after=N``, or the ``Last-Event-ID`` header that browsers send
when an ``EventSource`` reconnects, so a dropped connection resumes exactly
where it stopped. ``?type=`` and ``?stream_id=`` (both repeatable) filter.

Order and completeness come from ``EventStore.read_all(after=...)``, whose
positions are contiguous and become visible in commit order; a change stream
on the events collection (where the backend has one) only says when to read
again, and the feed also reads every ``poll_interval`` seconds. A comment line
goes out after ``heartbeat`` idle seconds so that proxies keep the connection,
and the feed stops when the client disconnects (checked at least every
``poll_interval``). A database outage ends the stream; the client's reconnect
resumes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse

from cqrs_kit.errors import TransientStoreError, UsageError
from cqrs_kit.events import RecordedEvent
from cqrs_kit.fastapi._doorbell import Doorbell
from cqrs_kit.fastapi.auth import AuthDependency, principal_dependency
from cqrs_kit.fastapi.problems import problem_responses
from cqrs_kit.store import EventStore

log = logging.getLogger("cqrs_kit.fastapi")


class EventStreamResponse(StreamingResponse):
    """A ``text/event-stream`` response that proxies should neither cache nor buffer."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str]) -> None:
        super().__init__(
            content,
            media_type=self.media_type,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )


def sse_message(recorded: RecordedEvent, *, include_metadata: bool) -> str:
    """One SSE message for ``recorded``: ``id`` = global position, ``data`` = the event as JSON."""
    document = recorded.to_document()
    if not include_metadata:
        document.pop("metadata", None)
    # json.dumps escapes newlines, so the data is one line, as SSE requires.
    data = json.dumps(document, separators=(",", ":"), default=str)
    return f"id: {recorded.position}\ndata: {data}\n\n"


class _Feed:
    def __init__(
        self,
        store: EventStore,
        bell: Doorbell,
        *,
        heartbeat: float,
        poll_interval: float,
        batch_size: int,
        include_metadata: bool,
        retry_ms: int,
    ) -> None:
        self.store = store
        self.bell = bell
        self.heartbeat = heartbeat
        self.poll_interval = poll_interval
        self.batch_size = batch_size
        self.include_metadata = include_metadata
        self.retry_ms = retry_ms

    async def read(
        self, after: int, types: frozenset[str] | None, streams: frozenset[str] | None
    ) -> tuple[list[RecordedEvent], int]:
        """The wanted events of the next batch, and the position read up to."""
        seen = after
        wanted: list[RecordedEvent] = []
        async for recorded in self.store.read_all(
            after=after, limit=self.batch_size, event_types=types, strict=False
        ):
            seen = recorded.position
            if streams is None or recorded.stream_id in streams:
                wanted.append(recorded)
        return wanted, seen

    async def messages(
        self,
        request: Request,
        start: int,
        first: tuple[list[RecordedEvent], int],
        types: frozenset[str] | None,
        streams: frozenset[str] | None,
    ) -> AsyncIterator[str]:
        loop = asyncio.get_running_loop()
        yield f"retry: {self.retry_ms}\n\n"
        batch, position = first
        idle_since = loop.time()
        try:
            async with self.bell.listen() as rung:
                while True:
                    for recorded in batch:
                        yield sse_message(recorded, include_metadata=self.include_metadata)
                    if batch:
                        idle_since = loop.time()
                    if await request.is_disconnected():
                        return
                    # Clear before reading: an append after the read rings again.
                    rung.clear()
                    batch, read_up_to = await self.read(position, types, streams)
                    moved = read_up_to > position
                    position = read_up_to
                    if moved:
                        continue
                    idle = loop.time() - idle_since
                    if idle >= self.heartbeat:
                        yield ": keep-alive\n\n"
                        idle_since = loop.time()
                        idle = 0.0
                    timeout = min(self.poll_interval, self.heartbeat - idle)
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(rung.wait(), timeout)
        except TransientStoreError as exc:
            # Ending the stream makes the client reconnect with Last-Event-ID.
            log.warning("event feed after position %d interrupted: %s", position, exc)


def _start(after: int | None, last_event_id: str | None) -> int:
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit():
            raise RequestValidationError(
                [
                    {
                        "loc": ("header", "Last-Event-ID"),
                        "msg": "must be a global position (a non-negative integer)",
                        "type": "int_parsing",
                    }
                ]
            )
        return int(text)
    return after or 0


def feed_router(
    store: EventStore,
    *,
    path: str = "/events",
    auth: AuthDependency | None = None,
    roles: Iterable[str] = (),
    heartbeat: float = 15.0,
    poll_interval: float = 1.0,
    batch_size: int = 200,
    include_metadata: bool = False,
    retry_ms: int = 2000,
    tags: Sequence[str] = ("events",),
    dependencies: Sequence[Any] = (),
) -> APIRouter:
    """An ``APIRouter`` serving the event log as Server-Sent Events at ``path``.

    Args:
        store: The event store to follow.
        path: Route path.
        auth: FastAPI dependency returning the `Principal`.
        roles: Roles needed to follow the feed (one of them).
        heartbeat: Seconds of silence after which a comment line is sent.
        poll_interval: Longest pause between reads of the log (and disconnect checks).
        batch_size: Events read per round trip.
        include_metadata: Send each event's metadata (principal, correlation id, ...).
        retry_ms: Reconnection delay suggested to clients.
        tags: OpenAPI tags.
        dependencies: Extra FastAPI dependencies.

    Raises:
        UsageError: A timing argument is not positive.
    """
    if heartbeat <= 0 or poll_interval <= 0 or batch_size <= 0:
        raise UsageError(
            "heartbeat, poll_interval and batch_size must be positive", code="bad-feed-settings"
        )
    bell = Doorbell(
        store.database, store.collection_name, [{"$match": {"operationType": "insert"}}]
    )
    feed = _Feed(
        store,
        bell,
        heartbeat=heartbeat,
        poll_interval=poll_interval,
        batch_size=batch_size,
        include_metadata=include_metadata,
        retry_ms=retry_ms,
    )
    principal_of = principal_dependency(auth, roles)

    async def follow(
        request: Request,
        principal: Any,
        types: list[str] | None,
        stream_ids: list[str] | None,
        after: int | None,
        last_event_id: str | None,
    ) -> EventStreamResponse:
        start = _start(after, last_event_id)
        wanted_types = frozenset(types) if types else None
        wanted_streams = frozenset(stream_ids) if stream_ids else None
        # Read the first batch before answering, so an unreachable database is a
        # 503 problem rather than a stream that ends at once.
        first = await feed.read(start, wanted_types, wanted_streams)
        return EventStreamResponse(
            feed.messages(request, start, first, wanted_types, wanted_streams)
        )

    kw = inspect.Parameter.KEYWORD_ONLY
    follow.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter(
                "request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request
            ),
            inspect.Parameter("principal", kw, annotation=Any, default=Depends(principal_of)),
            inspect.Parameter(
                "types",
                kw,
                annotation=list[str],
                default=Query(None, alias="type", description="Only events of these types."),
            ),
            inspect.Parameter(
                "stream_ids",
                kw,
                annotation=list[str],
                default=Query(None, alias="stream_id", description="Only events of these streams."),
            ),
            inspect.Parameter(
                "after",
                kw,
                annotation=int,
                default=Query(None, ge=0, description="Start after this global position."),
            ),
            inspect.Parameter(
                "last_event_id",
                kw,
                annotation=str,
                default=Header(
                    None,
                    alias="Last-Event-ID",
                    max_length=32,
                    description="Sent by reconnecting EventSource clients; wins over `after`.",
                ),
            ),
        ]
    )
    statuses = [422, 500, 503] + ([401, 403] if auth is not None else [])
    responses = problem_responses(statuses)
    responses[200] = {
        "description": "A stream of events, `id` = global position, `data` = the event as JSON.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    }
    router = APIRouter(tags=list(tags), dependencies=list(dependencies))
    router.add_api_route(
        path,
        follow,
        methods=["GET"],
        response_class=EventStreamResponse,
        status_code=200,
        responses=responses,
        summary="Follow the event log (Server-Sent Events)",
        name="follow_events",
    )
    return router
