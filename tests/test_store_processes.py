"""Writers in separate processes and appends in flight, seen by tailing readers.

RELIABILITY scenario 3 (many writer processes while readers tail
``read_all(after=...)``) and scenario 4 (a slow or aborted append in flight),
both against one ``nx-27017`` server. The readers assert their invariants on
every poll, not only at the end: each event they receive has exactly the
position after their checkpoint (so nothing is skipped, repeated or seen out
of order) and the version after the last one they saw of its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from cqrs_kit import (
    Event,
    EventRegistry,
    EventStore,
    IndeterminateCommitError,
    NewEvent,
    RecordedEvent,
)
from cqrs_kit.testing import EmbeddedServer

pytestmark = pytest.mark.slow

WORKER_SCRIPT = Path(__file__).with_name("_append_worker.py")
WORKERS = 4
APPENDS_PER_WORKER = 40
SHARED_STREAMS = 10
#: Upper bound for anything the tests wait for; a hang fails instead of blocking the run.
DEADLINE_S = 60.0


class Ticked(Event):
    """The workers' event, declared here as a separate reading service would declare it."""

    event_type: ClassVar[str] = "processes.Ticked"
    worker: int
    seq: int
    part: int


REGISTRY = EventRegistry(Ticked)


class Tail:
    """A reader following ``read_all(after=checkpoint)``, checking order on every event.

    Args:
        store: The store to read.
        limit: Events per poll; a small limit leaves the checkpoint inside
            multi-event commits, which the next poll must resume from correctly.
    """

    def __init__(self, store: EventStore, *, limit: int | None = None) -> None:
        self.store = store
        self.limit = limit
        self.checkpoint = 0
        self.seen: list[RecordedEvent] = []
        self.versions: dict[str, int] = {}
        self.polls_with_events = 0

    async def poll(self) -> int:
        """Read what is new after the checkpoint; return how many events arrived."""
        got = 0
        async for recorded in self.store.read_all(after=self.checkpoint, limit=self.limit):
            assert recorded.position == self.checkpoint + 1, (
                f"after position {self.checkpoint} the reader got {recorded.position}: "
                "a gap, a repeat or a position out of order"
            )
            expected_version = self.versions.get(recorded.stream_id, 0) + 1
            assert recorded.stream_version == expected_version, (
                f"{recorded.stream_id}: version {recorded.stream_version} "
                f"where {expected_version} was due"
            )
            assert isinstance(recorded.event, Ticked)
            self.versions[recorded.stream_id] = recorded.stream_version
            self.checkpoint = recorded.position
            self.seen.append(recorded)
            got += 1
        if got:
            self.polls_with_events += 1
        return got

    async def drain(self) -> None:
        """Poll until a poll brings nothing new."""
        while await self.poll():
            pass


@pytest_asyncio.fixture
async def client(nx_server: EmbeddedServer) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    """A client of the session's nx-27017 server."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        nx_server.uri, serverSelectionTimeoutMS=10_000
    )
    try:
        yield client
    finally:
        await client.close()


@pytest_asyncio.fixture
async def database_name(client: AsyncMongoClient[dict[str, Any]]) -> AsyncIterator[str]:
    """A fresh database name, dropped afterwards."""
    name = f"processes_{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        await client.drop_database(name)


# -- scenario 3: writer processes while readers tail -------------------------------------------


async def _start_worker(
    uri: str, database: str, worker: int, out_file: Path
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER_SCRIPT),
        uri,
        database,
        str(worker),
        str(APPENDS_PER_WORKER),
        str(SHARED_STREAMS),
        str(out_file),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _await_ready(proc: asyncio.subprocess.Process) -> None:
    assert proc.stdout is not None
    assert proc.stderr is not None
    line = await asyncio.wait_for(proc.stdout.readline(), DEADLINE_S)
    if line != b"ready\n":
        await proc.wait()
        errors = (await proc.stderr.read()).decode(errors="replace")
        pytest.fail(f"worker did not start (said {line!r}):\n{errors}")


async def test_writer_processes_while_readers_tail(
    nx_server: EmbeddedServer,
    client: AsyncMongoClient[dict[str, Any]],
    database_name: str,
    tmp_path: Path,
) -> None:
    store = EventStore(client[database_name], REGISTRY)
    await store.ensure_indexes()
    reports = [tmp_path / f"worker-{n}.json" for n in range(WORKERS)]
    procs = [
        await _start_worker(nx_server.uri, database_name, n, report)
        for n, report in enumerate(reports)
    ]
    try:
        for proc in procs:
            await _await_ready(proc)
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            await proc.stdin.drain()
            proc.stdin.close()

        # One reader takes whole batches; the other takes three events at a time,
        # so its checkpoint often stops inside a three-event commit.
        tails = [Tail(store), Tail(store, limit=3)]
        workers_done = asyncio.ensure_future(asyncio.gather(*(p.communicate() for p in procs)))
        deadline = time.monotonic() + DEADLINE_S
        while not workers_done.done():
            assert time.monotonic() < deadline, "workers did not finish in time"
            for tail in tails:
                await tail.poll()
            # Poll again in 10 ms, or as soon as the workers are done.
            await asyncio.wait({workers_done}, timeout=0.01)
        outputs = workers_done.result()
        polls_during_writes = tails[0].polls_with_events
        for tail in tails:
            await tail.drain()
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    for proc, (_, stderr) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, stderr.decode(errors="replace")
    acknowledged: dict[str, tuple[str, int, int, int]] = {}
    conflicts = 0
    for report_file in reports:
        report = json.loads(report_file.read_text())
        conflicts += report["conflicts"]
        assert len(report["appends"]) == APPENDS_PER_WORKER
        for ack in report["appends"]:
            assert not ack["replayed"]
            ids = ack["event_ids"]
            first_version = ack["version"] - len(ids) + 1
            assert ack["position"] - ack["first_position"] == len(ids) - 1
            for n, event_id in enumerate(ids):
                acknowledged[event_id] = (
                    ack["stream_id"],
                    first_version + n,
                    ack["first_position"] + n,
                    report["worker"],
                )

    # The readers' checks ran on every event; here: what they saw is exactly what
    # the workers were told was stored, no more and no less.
    for tail in tails:
        seen = {
            str(r.event_id): (r.stream_id, r.stream_version, r.position, r.event.worker)  # type: ignore[attr-defined]
            for r in tail.seen
        }
        assert len(seen) == len(tail.seen), "an event was delivered twice"
        assert seen == acknowledged
        assert [r.position for r in tail.seen] == list(range(1, len(acknowledged) + 1))
    assert await store.head_position() == len(acknowledged)
    # The run exercised what it claims to: reads overlapped the writes, and
    # exact-version appends met conflicts from the other processes and retried.
    assert polls_during_writes >= 2
    assert conflicts > 0


# -- scenario 4: an append in flight -----------------------------------------------------------


OP_MSG = 2013


def _command_name(message: bytes) -> bytes:
    """The command name of an OP_MSG (the first key of its body section), else b''."""
    (opcode,) = struct.unpack_from("<i", message, 12)
    # header (16 bytes), flag bits (4), section kind (1), document length (4), element type (1)
    if opcode != OP_MSG or len(message) < 27 or message[20] != 0:
        return b""
    start = 26
    return message[start : message.index(b"\x00", start)]


class InsertGate:
    """A TCP proxy in front of the server that can hold back or cut ``insert`` commands.

    In ``"hold"`` mode an insert reaches the proxy and waits there until
    :meth:`release`: the append has read the heads and sent its write, and the
    server has not seen it: an append in flight, as a slow network or a paused
    writer would leave it. In ``"cut"`` mode the proxy drops the connection
    instead, so the append aborts with its outcome unknown to the writer.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "pass"
        self.held = asyncio.Event()
        self._released = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def uri(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"mongodb://127.0.0.1:{port}/?directConnection=true"

    async def start(self) -> InsertGate:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def release(self) -> None:
        self.mode = "pass"
        self._released.set()

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
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        replies = asyncio.create_task(self._pump(up_reader, writer))
        try:
            while True:
                header = await reader.readexactly(16)
                (length,) = struct.unpack_from("<i", header)
                message = header + await reader.readexactly(length - 16)
                if _command_name(message) == b"insert":
                    if self.mode == "cut":
                        return
                    if self.mode == "hold":
                        self.held.set()
                        await self._released.wait()
                up_writer.write(message)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            replies.cancel()
            for w in (writer, up_writer):
                w.close()
            with contextlib.suppress(asyncio.CancelledError):
                await replies
            self._tasks.discard(task)

    @staticmethod
    async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        writer.close()


@dataclass
class GatedStores:
    """Two stores on one database: ``direct`` talks to the server, ``gated`` through the gate."""

    direct: EventStore
    gated: EventStore
    gate: InsertGate


@pytest_asyncio.fixture
async def gated_stores(
    nx_server: EmbeddedServer, client: AsyncMongoClient[dict[str, Any]], database_name: str
) -> AsyncIterator[GatedStores]:
    gate = await InsertGate(nx_server.port).start()
    gated_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        gate.uri, serverSelectionTimeoutMS=5_000
    )
    try:
        direct = EventStore(client[database_name], REGISTRY)
        await direct.ensure_indexes()
        gated = EventStore(gated_client[database_name], REGISTRY)
        await gated.ensure_indexes()  # its setup reads pass the gate before any test cuts it
        yield GatedStores(direct, gated, gate)
    finally:
        await gated_client.close()
        await gate.close()


def _batch(worker: int, seq: int, size: int) -> list[NewEvent]:
    return [NewEvent(Ticked(worker=worker, seq=seq, part=part)) for part in range(size)]


async def _read_stream_ids(store: EventStore, stream: str) -> list[uuid.UUID]:
    return [r.event_id async for r in store.read_stream(stream)]


async def test_reader_never_passes_an_append_in_flight(gated_stores: GatedStores) -> None:
    direct, gated, gate = gated_stores.direct, gated_stores.gated, gated_stores.gate
    await direct.append("before", _batch(0, 0, 2))
    tail = Tail(direct)
    assert await tail.poll() == 2

    slow_batch = _batch(1, 0, 3)
    gate.mode = "hold"
    slow = asyncio.create_task(gated.append("slow", slow_batch))
    try:
        await asyncio.wait_for(gate.held.wait(), DEADLINE_S)
        # The slow append read the log head (2) and its insert for position 3 is
        # in flight. Under a counter-and-transaction design position 3 would now
        # be reserved and invisible, and a reader would have to wait or skip it.
        # Here nothing is reserved: other writers take 3 onwards, and the reader
        # follows them without a gap.
        for seq in range(6):
            await direct.append(f"fast-{seq % 2}", _batch(2, seq, 1 + 2 * (seq % 2)))
            assert await tail.poll() > 0
            assert not slow.done()
        assert tail.checkpoint == 2 + 3 * (1 + 3)
        assert await _read_stream_ids(direct, "slow") == []

        passed = tail.checkpoint
        gate.release()
        result = await asyncio.wait_for(slow, DEADLINE_S)
    finally:
        if not slow.done():  # an assertion failed while the append was held
            slow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await slow
    # Its insert at position 3 collided with the commit there; it re-read the head
    # and committed after everything the reader had already passed.
    assert (result.first_position, result.position) == (passed + 1, passed + 3)
    assert not result.replayed
    assert await tail.poll() == 3
    assert [r.event_id for r in tail.seen[-3:]] == [item.event_id for item in slow_batch]
    assert tail.checkpoint == result.position


async def test_aborted_append_leaves_no_gap_and_retries_once(gated_stores: GatedStores) -> None:
    direct, gated, gate = gated_stores.direct, gated_stores.gated, gated_stores.gate
    await direct.append("before", _batch(0, 0, 1))
    tail = Tail(direct)
    assert await tail.poll() == 1

    aborted_batch = _batch(1, 0, 3)
    gate.mode = "cut"
    with pytest.raises(IndeterminateCommitError) as info:
        await gated.append("aborted", aborted_batch)
    assert info.value.stream_id == "aborted"
    assert await _read_stream_ids(direct, "aborted") == []
    for seq in range(4):
        await direct.append("fast", _batch(2, seq, 1))
        assert await tail.poll() == 1
    assert tail.checkpoint == 5

    # The writer does not know whether the aborted append landed; it retries the
    # same NewEvent objects, and the events are stored exactly once.
    gate.mode = "pass"
    result = await gated.append("aborted", aborted_batch)
    assert (result.first_position, result.position, result.version) == (6, 8, 3)
    again = await gated.append("aborted", aborted_batch)
    assert again.replayed
    assert (again.first_position, again.position) == (6, 8)
    await tail.drain()
    assert [r.position for r in tail.seen] == list(range(1, 9))
    assert await _read_stream_ids(direct, "aborted") == [item.event_id for item in aborted_batch]
