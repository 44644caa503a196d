"""Driver-specific code: the only package that imports pymongo, bson or motor."""

from cqrs_kit._mongo.adapter import (
    Capabilities,
    EncodingError,
    MongoCollection,
    MongoDatabase,
    WriteOp,
    WriteSummary,
    adapt,
)
from cqrs_kit._mongo.translate import DocumentTooLargeError, DuplicateKey

__all__ = [
    "Capabilities",
    "DocumentTooLargeError",
    "DuplicateKey",
    "EncodingError",
    "MongoCollection",
    "MongoDatabase",
    "WriteOp",
    "WriteSummary",
    "adapt",
]
