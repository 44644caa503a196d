"""Projections: read models kept up to date from the event log, effectively once.

Two kinds of projection, both run by a `Projector` inside a
`Subscription` (one per projection, each with
its own checkpoint and lease):

* `PipelineProjection` declares how a batch of events is grouped into
  read-model documents and how a group combines with the stored document
  (``Sum``, ``Last``, ``First``, ``Max``, ``Min``). The server does the work:
  an aggregation over the batch's commits, then ``$merge`` where the server
  honours ``$merge`` update pipelines, else an equivalent bulk upsert.
* `HandlerProjection` maps each event to `Upsert` / `Delete`
  values in Python (``@on(EventType)`` methods); a batch's updates are folded
  into one write per document and sent in one bulk write.

Effectively once
----------------
Every read-model document carries ``_position``: the global position of the
last event applied to it. A write never trusts a plain ``_position < p``
filter alone, because one batch can hold several events for a document: if a
crash left that document half way through an older batch, or a checkpoint was
moved back, a batch could hold events both below and above its
``_position`` ("straddle" it), and a single guarded update would apply them
all or none, double-counting or losing some. So a batch first reads the
``_position`` of every document it touches, drops the events each document
has already seen, and writes with a compare-and-set filter on the position it
read (``{_id, _position: <read>}``). A concurrent writer (a runner that lost
its lease but not its connection) makes the compare fail; the batch is then
recomputed from a fresh read. Only after the writes does the checkpoint
advance (``CheckpointStore.advance`` never moves backwards), so a crash
anywhere replays a batch whose effects are already guarded.

Where the server has multi-document transactions (a replica set), handler
projections and bulk-path pipeline projections write the read model and the
checkpoint in one transaction instead, so readers never see a half-applied
batch. ``$merge`` cannot run inside a transaction, so the ``$merge`` path
always uses the guard.

Aliases
-------
A projection's read model has a stable logical name (the projection name)
that resolves to a physical collection ``<name>__v<N>``. The mapping lives
in the projection's checkpoint document (``projection:<name>`` in the
``checkpoints`` collection), together with its position, so that a rebuild
switches collection *and* position with one single-document update (see
`cqrs_kit.rebuild`). Readers use `ReadModel`.
"""

from cqrs_kit.projections.declarations import (
    Accumulator,
    Count,
    First,
    HandlerProjection,
    IndexSpec,
    Last,
    Max,
    Min,
    PipelineProjection,
    Projection,
    Sum,
    on,
)
from cqrs_kit.projections.projector import BatchApplied, Projector
from cqrs_kit.projections.read_models import (
    KEY_PREFIX,
    ReadModel,
    ReadModelLocation,
    locate,
    physical_name,
    projection_key,
)
from cqrs_kit.projections.runner import ProjectionApp, ProjectionRunner
from cqrs_kit.projections.updates import Delete, Update, Upsert
from cqrs_kit.status import ProjectionStatus

__all__ = [
    "KEY_PREFIX",
    "Accumulator",
    "BatchApplied",
    "Count",
    "Delete",
    "First",
    "HandlerProjection",
    "IndexSpec",
    "Last",
    "Max",
    "Min",
    "PipelineProjection",
    "Projection",
    "ProjectionApp",
    "ProjectionRunner",
    "ProjectionStatus",
    "Projector",
    "ReadModel",
    "ReadModelLocation",
    "Sum",
    "Update",
    "Upsert",
    "locate",
    "on",
    "physical_name",
    "projection_key",
]
