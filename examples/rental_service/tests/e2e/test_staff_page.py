"""The staff page at ``/`` in headless Chromium: sign in, see the board, watch it follow the feed.

This runs the service exactly as ``make serve`` does, with no ``MONGODB_URI``: the service
starts its own embedded server under its data directory and stops it on SIGTERM.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from rich.console import Console

from examples.rental_service.scenario import (
    STAFF_EMAIL,
    STAFF_PASSWORD,
    RentalScenario,
    Report,
    rental_id_of,
)
from examples.rental_service.tests.e2e.browser import launch
from examples.rental_service.tests.e2e.client import ServiceClient
from examples.rental_service.tests.e2e.service_process import ServiceFactory

pytestmark = pytest.mark.slow


def row(rental_id: str, status: str | None = None) -> str:
    """A JavaScript expression: the board row of ``rental_id`` exists (with ``status``)."""
    selector = f'#board-rows tr[data-rental-id="{rental_id}"]'
    if status is not None:
        selector += f'[data-status="{status}"]'
    return f"document.querySelector({json.dumps(selector)}) !== null"


SIGN_IN = """
(() => {
  const type = (id, text) => {
    const input = document.getElementById(id);
    input.value = text;
    input.dispatchEvent(new Event("input", { bubbles: true }));
  };
  type("login-email", %s);
  type("login-password", %s);
  document.getElementById("login-submit").click();
  return true;
})()
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_the_board_shows_rentals_and_follows_the_feed_live(
    make_service: ServiceFactory, tmp_path: Path
) -> None:
    service = make_service(embedded=True).start()
    server_pids = [int(p.read_text()) for p in service.data_dir.rglob("nx-*.pid")]
    assert server_pids, "the service should have started its embedded server in DATA_DIR"
    report = Report(Console(width=120, highlight=False))
    async with ServiceClient(service.base_url) as client:
        scenario = RentalScenario(client, report)
        cast = await scenario.sign_up_members()
        await scenario.stock_catalog(cast)
        accepted = await client.command(cast.ann, "request-rental", {"skus": [scenario.coat]})
        first = rental_id_of(accepted)
        await scenario.wait_event(
            cast.staff, accepted["stream_id"], accepted["position"], "rentals.RentalConfirmed"
        )

        async with launch(log_path=tmp_path / "chromium.log") as browser:
            await browser.navigate(f"{service.base_url}/")
            await browser.evaluate(SIGN_IN % (json.dumps(STAFF_EMAIL), json.dumps(STAFF_PASSWORD)))
            await browser.wait_for(row(first, "confirmed"), within=15)
            await browser.wait_for(
                "document.getElementById('feed-state').textContent.trim() === 'live'",
                within=15,
            )

            # A command changes the rental: the page learns it from the feed, not a reload
            # (a reload would lose this marker).
            await browser.evaluate("window.__same_page = true")
            shipped = await client.command(cast.staff, "ship-rental", {"rental_id": first})
            await browser.wait_for(row(first, "shipped"), within=15)
            # "#last-event" reads "<type> @ <position>": the feed got at least that far.
            seen = await browser.evaluate(
                "Number(document.getElementById('last-event').textContent.split('@')[1])"
            )
            assert seen >= shipped["position"]

            # A rental that did not exist when the page loaded appears too.
            again = await client.command(cast.ben, "request-rental", {"skus": [scenario.bag]})
            second = rental_id_of(again)
            await browser.wait_for(row(second), within=15)
            count = await browser.evaluate(
                "document.querySelectorAll('#board-rows tr[data-rental-id]').length"
            )
            assert count >= 2
            assert await browser.evaluate("window.__same_page === true")
            assert browser.page_errors == []

    service.stop_cleanly()
    assert not [pid for pid in server_pids if alive(pid)], "the embedded server outlived it"
