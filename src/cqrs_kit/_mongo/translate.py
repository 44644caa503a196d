"""The single place where driver exceptions become cqrs-kit exceptions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    ExecutionTimeout,
    NetworkTimeout,
    OperationFailure,
    ServerSelectionTimeoutError,
    WTimeoutError,
)

from cqrs_kit.errors import ChangeStreamHistoryLostError, TransientStoreError

#: Server error codes meaning a change stream cannot resume from its token.
HISTORY_LOST_CODES = frozenset({136, 280, 286})
#: Error codes of document-size violations (BSONObjectTooLarge and friends).
TOO_LARGE_CODES = frozenset({10334, 17419, 17420})


class DocumentTooLargeError(Exception):
    """Internal marker: the server or driver refused a document for its size."""


class DuplicateKey(Exception):
    """Internal marker: a unique index refused a write.

    Callers decide what a clash means (a concurrency conflict, an idempotent
    retry, or a read-model key collision), so it is not a public error.
    """


@contextmanager
def translate_errors(operation: str) -> Iterator[None]:
    """Translate transient and change-stream driver errors raised inside the block.

    Duplicate-key errors become the internal `DuplicateKey`: only the
    caller knows whether one means a concurrency conflict, an idempotent retry
    or a clash of read-model keys.
    """
    try:
        yield
    except DuplicateKeyError as exc:
        raise DuplicateKey(str(exc)) from exc
    except BulkWriteError as exc:
        errors = exc.details.get("writeErrors", [])
        if errors and all(err.get("code") == 11000 for err in errors):
            raise DuplicateKey(str(exc)) from exc
        raise
    except (ServerSelectionTimeoutError, AutoReconnect, NetworkTimeout, ConnectionFailure) as exc:
        raise TransientStoreError(f"{operation}: database unreachable: {exc}") from exc
    except (ExecutionTimeout, WTimeoutError) as exc:
        raise TransientStoreError(f"{operation}: timed out: {exc}") from exc
    except DocumentTooLarge as exc:
        raise DocumentTooLargeError(str(exc)) from exc
    except OperationFailure as exc:
        if exc.code in HISTORY_LOST_CODES:
            raise ChangeStreamHistoryLostError(f"{operation}: {exc}") from exc
        if exc.code in TOO_LARGE_CODES:
            raise DocumentTooLargeError(str(exc)) from exc
        if exc.has_error_label("TransientTransactionError") or exc.has_error_label(
            "RetryableWriteError"
        ):
            raise TransientStoreError(f"{operation}: {exc}") from exc
        raise
