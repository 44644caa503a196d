"""The README's main job: ``make demo`` plays the whole scenario and exits 0."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cqrs_kit.testing import EmbeddedServer
from examples.rental_service.scenario import run_demo

pytestmark = pytest.mark.slow


async def test_the_scripted_scenario_passes_end_to_end(e2e_mongo: EmbeddedServer) -> None:
    # The same code path as `make demo`, on the tests' server (a database of its own)
    # instead of a second embedded server.
    out = io.StringIO()
    code = await run_demo(Console(file=out, width=140), environ={"MONGODB_URI": e2e_mongo.uri})
    text = out.getvalue()
    assert code == 0, text
    assert "scenario passed" in text
    for table in ("catalog", "rental-board", "my-rentals", "outbox", "revenue", "utilisation"):
        assert table in text, table
