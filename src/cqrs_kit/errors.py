"""The one exception hierarchy of cqrs-kit.

Every error the library raises on purpose derives from `CqrsKitError`,
and carries its context as attributes (stream id, versions, position, event
id) so callers never have to parse a message:

    CqrsKitError
    ├── UsageError                  misuse of the API; the message says how to fix it
    ├── InvalidStreamIdError        empty or malformed stream id
    ├── SerializationError
    │   ├── EventEncodingError      a payload cannot be stored
    │   ├── EventDecodingError      a stored payload no longer validates
    │   └── UnknownEventTypeError   a stored type has no registered class
    ├── StoreError
    │   ├── ConcurrencyError        expected version did not match
    │   ├── DuplicateEventError     an event id is already stored elsewhere
    │   ├── EventTooLargeError      an append exceeds the 16 MiB document limit
    │   ├── TransientStoreError     network or failover problem; safe to retry
    │   │   └── IndeterminateCommitError  the commit may or may not have happened
    │   └── ChangeStreamHistoryLostError  a resume token fell off the oplog
    ├── DomainError                 raised by domain code; never retried
    ├── CommandError
    │   └── HandlerNotFoundError    no handler for a command type
    ├── ProjectionError             projection runtime failures
    │   └── LeaseLostError          another runner took over a lease
    └── RoutingError
        ├── PatternError            an invalid EventBridge-style pattern
        ├── RoutingFileError        an invalid routing YAML file
        └── DeadLetterNotFoundError no dead letter has the given id

Driver exceptions are translated into this tree at exactly one boundary,
inside ``cqrs_kit._mongo``.
"""

from __future__ import annotations

from typing import Any


class CqrsKitError(Exception):
    """Root of every error raised by cqrs-kit."""


class UsageError(CqrsKitError):
    """The library was used in a way it does not support.

    Attributes:
        code: A short, stable identifier for the kind of misuse, documented in
            ``docs/errors.md``.
    """

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(f"{message} [code: {code}]")
        self.code = code


class InvalidStreamIdError(CqrsKitError):
    """A stream id was empty, not a string, or too long."""

    def __init__(self, stream_id: object, reason: str) -> None:
        super().__init__(f"invalid stream id {stream_id!r}: {reason}")
        self.stream_id = stream_id
        self.reason = reason


class SerializationError(CqrsKitError):
    """An event could not be converted to or from its stored form."""


class EventEncodingError(SerializationError):
    """An event payload cannot be stored (not serialisable to BSON)."""

    def __init__(self, *, stream_id: str, event_type: str, reason: str) -> None:
        super().__init__(f"cannot encode event {event_type!r} for stream {stream_id!r}: {reason}")
        self.stream_id = stream_id
        self.event_type = event_type
        self.reason = reason


class EventDecodingError(SerializationError):
    """A stored event does not validate against its registered class."""

    def __init__(
        self,
        *,
        event_type: str,
        schema_version: int,
        stream_id: str,
        position: int,
        reason: str,
    ) -> None:
        super().__init__(
            f"cannot decode event {event_type!r} v{schema_version} at position {position} "
            f"(stream {stream_id!r}): {reason}"
        )
        self.event_type = event_type
        self.schema_version = schema_version
        self.stream_id = stream_id
        self.position = position
        self.reason = reason


class UnknownEventTypeError(SerializationError):
    """An event type name has no class in the registry."""

    def __init__(
        self, event_type: str, *, stream_id: str | None = None, position: int | None = None
    ) -> None:
        where = ""
        if stream_id is not None:
            where = f" (stream {stream_id!r}, position {position})"
        super().__init__(
            f"unknown event type {event_type!r}{where}; register its class with "
            "EventRegistry.register() before reading it"
        )
        self.event_type = event_type
        self.stream_id = stream_id
        self.position = position


class StoreError(CqrsKitError):
    """The event store refused or could not complete an operation."""


class ConcurrencyError(StoreError):
    """The stream was not at the version the caller expected."""

    def __init__(self, stream_id: str, *, expected: int | None, actual: int) -> None:
        super().__init__(f"stream {stream_id!r} is at version {actual}, expected {expected}")
        self.stream_id = stream_id
        self.expected = expected
        self.actual = actual


class DuplicateEventError(StoreError):
    """An event id in the batch is already stored as part of a different append."""

    def __init__(self, event_id: Any, *, stream_id: str) -> None:
        super().__init__(
            f"event id {event_id} is already stored as part of a different append "
            f"(appending to stream {stream_id!r})"
        )
        self.event_id = event_id
        self.stream_id = stream_id


class EventTooLargeError(StoreError):
    """An append would produce a document above the server's size limit."""

    def __init__(self, *, stream_id: str, size: int, limit: int) -> None:
        super().__init__(
            f"append to stream {stream_id!r} is {size} bytes, above the {limit}-byte "
            "document limit; split the batch or store large blobs elsewhere"
        )
        self.stream_id = stream_id
        self.size = size
        self.limit = limit


class TransientStoreError(StoreError):
    """The database could not be reached or failed over; the operation may be retried."""


class IndeterminateCommitError(TransientStoreError):
    """The connection failed while an append was being committed.

    Retrying the same append (same event ids) is safe: the store either
    returns the original result or stores the events once.
    """

    def __init__(self, *, stream_id: str, reason: str) -> None:
        super().__init__(
            f"append to stream {stream_id!r} may or may not have been stored: {reason}; "
            "retry it with the same event ids"
        )
        self.stream_id = stream_id
        self.reason = reason


class ChangeStreamHistoryLostError(StoreError):
    """A change-stream resume token is no longer in the server's history."""


class DomainError(CqrsKitError):
    """Base for errors raised by domain code: a rule said no.

    Command buses never retry a ``DomainError``; HTTP routers answer it with a
    problem document whose ``type`` is derived from the subclass name.
    """

    status_code: int = 409


class CommandError(CqrsKitError):
    """A command could not be dispatched."""


class HandlerNotFoundError(CommandError):
    """No handler is registered for a command type."""

    def __init__(self, command_type: str) -> None:
        super().__init__(
            f"no handler registered for command {command_type!r}; register one with "
            "@bus.handles(...) or bus.register(...)"
        )
        self.command_type = command_type


class ProjectionError(CqrsKitError):
    """A projection could not be run, rebuilt or reset."""


class LeaseLostError(ProjectionError):
    """Another runner holds the lease this runner needed."""

    def __init__(self, name: str, *, owner: str | None) -> None:
        super().__init__(f"lease {name!r} is held by {owner!r}")
        self.name = name
        self.owner = owner


class RoutingError(CqrsKitError):
    """Event routing was misconfigured or failed."""


class PatternError(RoutingError):
    """An event pattern is not valid.

    Attributes:
        path: Where in the pattern the problem is, as a dotted path.
    """

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"invalid event pattern at {path or '<root>'}: {reason}")
        self.path = path
        self.reason = reason


class RoutingFileError(RoutingError):
    """A routing file could not be loaded.

    Attributes:
        file: The file name.
        line: 1-based line number where known.
        path: The dotted path inside the document.
    """

    def __init__(self, file: str, *, line: int | None, path: str, reason: str) -> None:
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {path or '<root>'}: {reason}")
        self.file = file
        self.line = line
        self.path = path
        self.reason = reason


class DeadLetterNotFoundError(RoutingError):
    """No dead letter has the given id.

    Attributes:
        entry_id: The id asked for (``<subscriber>:<event id>``).
    """

    def __init__(self, entry_id: str) -> None:
        super().__init__(f"no dead letter with id {entry_id!r}; list them with `cqrs-kit dlq list`")
        self.entry_id = entry_id
