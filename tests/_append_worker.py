"""One writer process for ``test_store_processes.py`` (RELIABILITY scenario 3).

Run as ``python tests/_append_worker.py URI DATABASE WORKER APPENDS STREAMS OUT_FILE``.
The worker connects, prints ``ready``, and waits for a line on stdin so that
every worker starts appending at the same moment. It then makes ``APPENDS``
appends of one or three events: the first creates the worker's own stream with
``ExpectedVersion.NO_STREAM``, the rest go to ``STREAMS`` streams shared by all
workers, half with ``expected_version=None`` and half with the version this
worker last saw for the stream. That version is usually stale (other processes
append to the same streams), so those appends meet ``ConcurrencyError`` and
retry at the version the error reports. Every acknowledged ``AppendResult`` is
written to ``OUT_FILE`` as JSON, for the test to compare with what a reader saw.
"""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path
from typing import Any, ClassVar

from pymongo import AsyncMongoClient

from cqrs_kit import (
    AppendResult,
    ConcurrencyError,
    Event,
    EventRegistry,
    EventStore,
    ExpectedVersion,
    NewEvent,
)

#: How often one append may meet ConcurrencyError before the worker gives up.
MAX_CONFLICTS_PER_APPEND = 200


class Ticked(Event):
    """What the workers append; ``part`` numbers the events of one batch."""

    event_type: ClassVar[str] = "processes.Ticked"
    worker: int
    seq: int
    part: int


async def _append_at_known_version(
    store: EventStore, stream: str, batch: list[NewEvent], known: int
) -> tuple[AppendResult, int]:
    """Append with an exact expected version, retrying on conflicts; return (result, conflicts)."""
    expected = known
    for conflicts in range(MAX_CONFLICTS_PER_APPEND):
        try:
            return await store.append(stream, batch, expected_version=expected), conflicts
        except ConcurrencyError as exc:
            if (exc.stream_id, exc.expected) != (stream, expected) or exc.actual <= expected:
                raise RuntimeError(f"{stream}: a conflict that makes no sense: {exc}") from exc
            expected = exc.actual
    raise RuntimeError(f"{stream}: {MAX_CONFLICTS_PER_APPEND} conflicts in a row")


async def run(uri: str, database: str, worker: int, appends: int, streams: int) -> dict[str, Any]:
    """Connect, wait for the start signal, append; return what was acknowledged."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, serverSelectionTimeoutMS=10_000
    )
    try:
        store = EventStore(client[database], EventRegistry(Ticked))
        await store.head_position()  # connected before the start signal
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)

        rng = random.Random(worker)
        known: dict[str, int] = {}  # the version this worker last saw per stream
        acknowledged: list[dict[str, Any]] = []
        conflicts = 0
        for seq in range(appends):
            batch = [
                NewEvent(Ticked(worker=worker, seq=seq, part=part))
                for part in range(rng.choice((1, 3)))
            ]
            if seq == 0:
                stream = f"own-{worker}"
                mode = "no-stream"
                result = await store.append(
                    stream, batch, expected_version=ExpectedVersion.NO_STREAM
                )
            elif rng.random() < 0.5:
                stream = f"shared-{rng.randrange(streams)}"
                mode = "any"
                result = await store.append(stream, batch, expected_version=ExpectedVersion.ANY)
            else:
                stream = rng.choice([f"own-{worker}", *(f"shared-{n}" for n in range(streams))])
                mode = "exact"
                result, lost = await _append_at_known_version(
                    store, stream, batch, known.get(stream, 0)
                )
                conflicts += lost
            known[stream] = result.version
            acknowledged.append(
                {
                    "seq": seq,
                    "mode": mode,
                    "stream_id": result.stream_id,
                    "event_ids": [str(item.event_id) for item in batch],
                    "version": result.version,
                    "first_position": result.first_position,
                    "position": result.position,
                    "replayed": result.replayed,
                }
            )
        return {"worker": worker, "conflicts": conflicts, "appends": acknowledged}
    finally:
        await client.close()


def main(argv: list[str]) -> None:
    """Parse the command line, run, and write the report atomically."""
    uri, database, worker, appends, streams, out_file = argv
    report = asyncio.run(run(uri, database, int(worker), int(appends), int(streams)))
    out = Path(out_file)
    partial = out.with_suffix(".partial")
    partial.write_text(json.dumps(report))
    partial.replace(out)


if __name__ == "__main__":
    main(sys.argv[1:])
