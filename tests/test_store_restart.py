"""The database process is killed during appends and started again (RELIABILITY scenario 13).

An ``nx-27017`` server keeps its data in a SQLite file. Writers append
continuously while the server is SIGKILLed twice and restarted on the same
port and file each time: once as an insert is on its way to the server (the
commit never happens), once just after the server committed an insert and
before its acknowledgement reaches the client (the commit happened, the writer
cannot know). A small TCP proxy in front of the server picks those two
instants, so the test is deterministic; the server really dies.

Writers see only typed, retryable errors (``TransientStoreError`` and its
subclass ``IndeterminateCommitError``), retry the same ``NewEvent`` objects,
and converge: every acknowledged append is stored once, the append whose
acknowledgement was lost comes back as ``replayed``, positions and versions are
contiguous.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import bson
import pytest
from pymongo import AsyncMongoClient

from cqrs_kit import (
    AppendResult,
    DuplicateEventError,
    Event,
    EventRegistry,
    EventStore,
    IndeterminateCommitError,
    NewEvent,
    TransientStoreError,
)
from cqrs_kit.testing import EmbeddedServer

WRITERS = 3
APPENDS_PER_WRITER = 10
#: Bound for everything the test waits for.
DEADLINE_S = 45.0
OP_MSG = 2013


class Deposited(Event):
    event_type: ClassVar[str] = "restart.Deposited"
    writer: int
    seq: int
    part: int


REGISTRY = EventRegistry(Deposited)


def _insert_ids(message: bytes) -> list[Any] | None:
    """The ``_id``s of an OP_MSG ``insert`` command's documents; ``None`` for other messages."""
    (opcode,) = struct.unpack_from("<i", message, 12)
    if opcode != OP_MSG or message[20] != 0:
        return None
    # header (16 bytes), flag bits (4), kind-0 section: kind (1), then the body document
    (body_length,) = struct.unpack_from("<i", message, 21)
    body = bson.decode(message[21 : 21 + body_length])
    if next(iter(body)) != "insert":
        return None
    ids = [doc["_id"] for doc in body.get("documents", [])]
    pos = 21 + body_length
    while pos < len(message):  # kind-1 sections: a document sequence
        (size,) = struct.unpack_from("<i", message, pos + 1)
        end = pos + 1 + size
        pos = message.index(b"\x00", pos + 5) + 1
        while pos < end:
            (doc_length,) = struct.unpack_from("<i", message, pos)
            ids.append(bson.decode(message[pos : pos + doc_length])["_id"])
            pos += doc_length
    return ids


def _reply_committed(message: bytes) -> bool:
    """Whether an OP_MSG reply to an insert reports the document written."""
    (body_length,) = struct.unpack_from("<i", message, 21)
    reply = bson.decode(message[21 : 21 + body_length])
    return reply.get("ok") == 1 and reply.get("n", 0) > 0 and not reply.get("writeErrors")


async def _read_message(reader: asyncio.StreamReader) -> bytes:
    header = await reader.readexactly(16)
    (length,) = struct.unpack_from("<i", header)
    return header + await reader.readexactly(length - 16)


class KillSwitch:
    """A TCP proxy in front of the server that calls ``kill`` at a chosen point of an insert.

    ``arm("before-insert")``: the next insert is not forwarded; the server is
    killed and the client's connection dropped, so that commit never happens.
    ``arm("after-commit")``: the next insert is forwarded, and when the server's
    reply reports it written (the commit is durable) the server is killed and
    the reply dropped, so the commit happened but its acknowledgement is lost.
    An insert refused by a unique index (a lost race for a position) is not a
    commit: its reply is passed on and the switch stays armed.
    """

    def __init__(self, upstream_port: int, kill: Callable[[], None]) -> None:
        self.upstream_port = upstream_port
        self.kill = kill
        self.armed: str | None = None
        #: (point, ids of the insert's documents) for every kill so far.
        self.fired: list[tuple[str, list[Any]]] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def uri(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"mongodb://127.0.0.1:{port}/?directConnection=true"

    async def start(self) -> KillSwitch:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def arm(self, point: str) -> None:
        assert point in ("before-insert", "after-commit")
        self.armed = point

    def _fire(self, point: str, ids: list[Any]) -> None:
        self.armed = None
        self.fired.append((point, ids))
        self.kill()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:  # the server is down: refuse, as the server itself would
            writer.close()
            self._tasks.discard(task)
            return
        # Ids of an insert whose reply must be dropped (one request in flight per
        # connection: the driver waits for each reply before sending again).
        swallow: list[list[Any]] = []

        async def requests() -> None:
            while True:
                message = await _read_message(reader)
                ids = _insert_ids(message)
                if ids is not None and self.armed == "before-insert":
                    self._fire("before-insert", ids)
                    return
                if ids is not None and self.armed == "after-commit":
                    self.armed = None
                    swallow.append(ids)
                up_writer.write(message)
                await up_writer.drain()

        async def replies() -> None:
            while True:
                message = await _read_message(up_reader)
                if swallow:
                    ids = swallow.pop()
                    if _reply_committed(message):
                        self._fire("after-commit", ids)
                        return
                    self.armed = "after-commit"  # not a commit; wait for the next insert
                writer.write(message)
                await writer.drain()

        pumps = [asyncio.create_task(requests()), asyncio.create_task(replies())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            results = await asyncio.gather(*pumps, return_exceptions=True)
            for w in (writer, up_writer):
                w.close()
            self._tasks.discard(task)
        for result in results:
            expected = (asyncio.CancelledError, asyncio.IncompleteReadError, ConnectionError)
            if isinstance(result, BaseException) and not isinstance(result, expected):
                raise result


@dataclass
class Writer:
    """Appends to its own stream at exact expected versions, retrying transient errors."""

    number: int
    store: EventStore
    stream: str = ""
    version: int = 0
    acknowledged: list[tuple[list[NewEvent], AppendResult]] = field(default_factory=list)
    errors: list[TransientStoreError] = field(default_factory=list)
    #: Event ids of the appends that met an IndeterminateCommitError.
    indeterminate: set[Any] = field(default_factory=set)
    done: bool = False

    def __post_init__(self) -> None:
        self.stream = f"account-{self.number}"

    async def run(self, progress: Callable[[], None]) -> None:
        for seq in range(APPENDS_PER_WRITER):
            batch = [
                NewEvent(Deposited(writer=self.number, seq=seq, part=part))
                for part in range(1 + seq % 2)
            ]
            deadline = time.monotonic() + DEADLINE_S
            while True:
                try:
                    result = await self.store.append(
                        self.stream, batch, expected_version=self.version
                    )
                    break
                except TransientStoreError as exc:
                    # Retry the SAME NewEvent objects: their ids make the retry idempotent.
                    self.errors.append(exc)
                    if isinstance(exc, IndeterminateCommitError):
                        self.indeterminate.add(str(batch[0].event_id))
                    if time.monotonic() > deadline:
                        raise AssertionError(f"{self.stream}: no recovery") from exc
                    await asyncio.sleep(0.02)  # retry pacing, not a wait for a condition
            self.version = result.version
            self.acknowledged.append((batch, result))
            progress()
        self.done = True


async def _until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` every 10 ms until it holds; fail after the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        await asyncio.sleep(0.01)


@pytest.mark.slow
async def test_server_killed_and_restarted_during_appends(tmp_path: Path) -> None:
    db_file = tmp_path / "events.sqlite"
    workdir = tmp_path / "nx"
    servers = [EmbeddedServer(db_file, workdir=workdir).start()]
    port = servers[0].port
    switch = await KillSwitch(port, kill=lambda: servers[-1].kill()).start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        switch.uri, serverSelectionTimeoutMS=2_000, connectTimeoutMS=2_000
    )
    tasks: list[asyncio.Task[None]] = []
    try:
        store = EventStore(client["restart"], REGISTRY)
        await store.ensure_indexes()
        writers = [Writer(n, store) for n in range(WRITERS)]
        acked = 0

        def progress() -> None:
            nonlocal acked
            acked += 1

        tasks = [asyncio.create_task(w.run(progress)) for w in writers]

        for point, after_acks in (("before-insert", 6), ("after-commit", 16)):
            await _until(lambda n=after_acks: acked >= n, f"{after_acks} appends are acknowledged")
            errors_before = [len(w.errors) for w in writers]
            switch.arm(point)
            await _until(lambda: not switch.armed, f"an insert meets the {point} kill")
            # Leave the server down until every writer still running has hit the outage.
            await _until(
                lambda before=errors_before: all(
                    w.done or len(w.errors) > n for w, n in zip(writers, before, strict=True)
                ),
                "every running writer saw a transient error",
            )
            servers.append(EmbeddedServer(db_file, port=port, workdir=workdir).start())

        await asyncio.wait_for(asyncio.gather(*tasks), DEADLINE_S)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()
        await switch.close()

    try:
        # Read back through a fresh client that talks to the restarted server directly.
        reader: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            servers[-1].uri, serverSelectionTimeoutMS=10_000
        )
        try:
            fresh = EventStore(reader["restart"], REGISTRY)
            everything = [r async for r in fresh.read_all()]
            streams = {w.stream: [r async for r in fresh.read_stream(w.stream)] for w in writers}
        finally:
            await reader.close()
    finally:
        for server in servers:
            server.cleanup()

    assert [point for point, _ in switch.fired] == ["before-insert", "after-commit"]
    # Positions are contiguous and every event is there exactly once.
    assert [r.position for r in everything] == list(range(1, len(everything) + 1))
    assert len({r.event_id for r in everything}) == len(everything)
    for w in writers:
        assert len(w.acknowledged) == APPENDS_PER_WRITER
        # The stream holds exactly the acknowledged batches, in order, once each.
        written = [item.event_id for batch, _ in w.acknowledged for item in batch]
        stored = streams[w.stream]
        assert [r.event_id for r in stored] == written
        assert [r.stream_version for r in stored] == list(range(1, len(written) + 1))
        # Each result names where its events are.
        by_id = {r.event_id: r for r in stored}
        for batch, result in w.acknowledged:
            recorded = [by_id[item.event_id] for item in batch]
            assert [r.position for r in recorded] == list(
                range(result.first_position, result.position + 1)
            )
            assert recorded[-1].stream_version == result.version
    assert len(everything) == sum(len(b) for w in writers for b, _ in w.acknowledged)

    # The outages surfaced as typed, retryable errors (anything else would have
    # escaped Writer.run and failed the test): both killed inserts as
    # IndeterminateCommitError.
    for point, ids in switch.fired:
        assert any(str(ids[0]) in w.indeterminate for w in writers), point
    # The append whose acknowledgement was lost was stored by the server before it
    # died; its retry found it and returned the original result instead of a copy.
    lost_ack = str(switch.fired[1][1][0])
    replayed = {str(b[0].event_id) for w in writers for b, r in w.acknowledged if r.replayed}
    assert lost_ack in replayed
    assert replayed <= {i for w in writers for i in w.indeterminate}
    # The insert that never reached the server was stored by its retry, not replayed.
    assert str(switch.fired[0][1][0]) not in replayed


# -- a retry that does not resend the whole batch, on every backend -----------------------------


@pytest.fixture
def event_registry() -> EventRegistry:
    return REGISTRY


async def test_retry_that_splits_a_stored_batch_is_refused(event_store: EventStore) -> None:
    # A writer lost the answer to a two-event append that did land (as in the restart
    # above), and retries its events one append at a time. Each is refused as a reused
    # id, as MongoDB's unique index on event_ids refuses them, on backends that do not
    # enforce that index as well; the second one used to be stored a second time there.
    batch = [NewEvent(Deposited(writer=0, seq=0, part=part)) for part in range(2)]
    await event_store.append("account-0", batch)
    for single in batch:
        with pytest.raises(DuplicateEventError) as info:
            await event_store.append("account-1", [single])
        assert info.value.event_id == str(single.event_id)
    stored = [r async for r in event_store.read_all()]
    assert [(r.stream_id, r.position) for r in stored] == [("account-0", 1), ("account-0", 2)]
    assert await event_store.stream_version("account-1") == 0
