"""Contracts for the consumer bookkeeping: checkpoints and leases.

Every projection and subscriber relies on two promises: a checkpoint only
moves forward (so a replayed batch cannot rewind a consumer), and a lease has
at most one live holder (so two runners never write one read model). Bind the
suites to a backend by providing ``mongo_database`` (the bundled plugin does):

    pytest_plugins = ["cqrs_kit.testing.plugin"]

    class TestCheckpoints(CheckpointStoreContract):
        pass

    class TestLeases(LeaseManagerContract):
        pass
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from cqrs_kit.checkpoints import CheckpointStore, ConsumerError, ConsumerState
from cqrs_kit.leases import LeaseManager


class CheckpointStoreContract:
    """Contract tests for `CheckpointStore`."""

    @pytest.fixture
    def checkpoint_store(self, mongo_database: Any) -> CheckpointStore:
        """A checkpoint store on the backend under test."""
        return CheckpointStore(mongo_database)

    async def test_a_consumer_that_never_ran_is_at_zero(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        assert await checkpoint_store.load("never") is None
        assert await checkpoint_store.position("never") == 0

    async def test_advance_moves_forward_only(self, checkpoint_store: CheckpointStore) -> None:
        assert await checkpoint_store.advance("p", 5) is True
        assert await checkpoint_store.advance("p", 3) is False
        assert await checkpoint_store.advance("p", 5) is False
        assert await checkpoint_store.position("p") == 5
        assert await checkpoint_store.advance("p", 9) is True
        assert await checkpoint_store.position("p") == 9

    async def test_concurrent_advances_keep_the_highest(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        targets = [4, 11, 2, 7, 11, 3]
        await asyncio.gather(*(checkpoint_store.advance("p", t) for t in targets))
        assert await checkpoint_store.position("p") == max(targets)

    async def test_status_and_error_are_recorded_then_cleared(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        await checkpoint_store.advance("p", 6)
        error = ConsumerError("ValueError: bad", position=7, event_id="e-7", attempts=2, at=1.5)
        await checkpoint_store.set_status(
            "p", state=ConsumerState.FAULTED, error=error, owner="host-1"
        )
        faulted = await checkpoint_store.load("p")
        assert faulted is not None
        assert (faulted.state, faulted.error, faulted.owner) == (
            ConsumerState.FAULTED,
            error,
            "host-1",
        )
        assert faulted.position == 6, "a status write must not move the position"

        await checkpoint_store.set_status("p", state=ConsumerState.RUNNING, clear_error=True)
        running = await checkpoint_store.load("p")
        assert running is not None
        assert (running.state, running.error, running.position) == (ConsumerState.RUNNING, None, 6)

    async def test_status_of_a_new_consumer_starts_it_at_zero(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        await checkpoint_store.set_status("fresh", state=ConsumerState.CATCHING_UP)
        loaded = await checkpoint_store.load("fresh")
        assert loaded is not None
        assert (loaded.position, loaded.state) == (0, ConsumerState.CATCHING_UP)

    async def test_resume_token_is_kept_with_its_scope(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        await checkpoint_store.advance("p", 3)
        await checkpoint_store.save_resume_token("p", {"_data": "8263"}, scope="events:abc")
        loaded = await checkpoint_store.load("p")
        assert loaded is not None
        assert dict(loaded.resume_token or {}) == {"_data": "8263"}
        assert (loaded.token_scope, loaded.position) == ("events:abc", 3)

    async def test_reset_rewinds_and_forgets_token_and_error(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        await checkpoint_store.advance("p", 8)
        await checkpoint_store.save_resume_token("p", {"_data": "ff"}, scope="s")
        error = ConsumerError("E: x", position=9, event_id=None, attempts=1, at=0.0)
        await checkpoint_store.set_status("p", state=ConsumerState.FAULTED, error=error)
        await checkpoint_store.reset("p", 2)
        loaded = await checkpoint_store.load("p")
        assert loaded is not None
        assert (loaded.position, loaded.resume_token, loaded.error, loaded.state) == (
            2,
            None,
            None,
            ConsumerState.STOPPED,
        )
        assert await checkpoint_store.advance("p", 3) is True

    async def test_list_filters_by_prefix_in_name_order(
        self, checkpoint_store: CheckpointStore
    ) -> None:
        for name in ("projection:b", "subscriber:x", "projection:a"):
            await checkpoint_store.advance(name, 1)
        listed = await checkpoint_store.list("projection:")
        assert [c.name for c in listed] == ["projection:a", "projection:b"]

    async def test_delete_forgets_the_consumer(self, checkpoint_store: CheckpointStore) -> None:
        await checkpoint_store.advance("p", 4)
        await checkpoint_store.delete("p")
        assert await checkpoint_store.load("p") is None


class LeaseManagerContract:
    """Contract tests for `LeaseManager`: one live holder at a time."""

    #: Lease lifetime used where a test waits for expiry; short, to keep tests fast.
    short_ttl: float = 0.2

    def leases(self, mongo_database: Any, owner: str, ttl: float = 30.0) -> LeaseManager:
        """A lease manager for ``owner`` on the backend under test."""
        return LeaseManager(mongo_database, owner=owner, ttl=ttl)

    async def test_a_held_lease_refuses_others(self, mongo_database: Any) -> None:
        first, second = self.leases(mongo_database, "a"), self.leases(mongo_database, "b")
        taken = await first.try_acquire("proj")
        assert taken is not None
        assert taken.owner == "a"
        assert await second.try_acquire("proj") is None
        holder = await second.holder("proj")
        assert holder is not None
        assert holder.owner == "a"

    async def test_renewal_by_the_holder_keeps_the_fence(self, mongo_database: Any) -> None:
        first = self.leases(mongo_database, "a")
        taken = await first.try_acquire("proj")
        again = await first.try_acquire("proj")
        assert taken is not None
        assert again is not None
        assert again.fence == taken.fence
        assert again.expires_at >= taken.expires_at

    async def test_release_hands_over_with_a_higher_fence(self, mongo_database: Any) -> None:
        first, second = self.leases(mongo_database, "a"), self.leases(mongo_database, "b")
        taken = await first.try_acquire("proj")
        await first.release("proj")
        assert await first.holder("proj") is None
        took_over = await second.try_acquire("proj")
        assert taken is not None
        assert took_over is not None
        assert took_over.owner == "b"
        assert took_over.fence > taken.fence

    async def test_an_expired_lease_can_be_taken_over(self, mongo_database: Any) -> None:
        first = self.leases(mongo_database, "a", ttl=self.short_ttl)
        second = self.leases(mongo_database, "b", ttl=self.short_ttl)
        assert await first.try_acquire("proj") is not None
        deadline = time.monotonic() + 10 * self.short_ttl + 5
        while (taken := await second.try_acquire("proj")) is None:
            assert time.monotonic() < deadline, "the expired lease was never taken over"
            await asyncio.sleep(self.short_ttl / 4)
        assert taken.owner == "b"

    async def test_racing_acquirers_elect_exactly_one(self, mongo_database: Any) -> None:
        managers = [self.leases(mongo_database, f"runner-{n}") for n in range(6)]
        results = await asyncio.gather(*(m.try_acquire("proj") for m in managers))
        winners = [r.owner for r in results if r is not None]
        assert len(winners) == 1, winners
        holder = await managers[0].holder("proj")
        assert holder is not None
        assert holder.owner == winners[0]

    async def test_hold_signals_when_the_lease_is_lost(self, mongo_database: Any) -> None:
        holder = self.leases(mongo_database, "a", ttl=self.short_ttl)
        thief = self.leases(mongo_database, "b", ttl=30.0)
        async with holder.hold("proj") as lost:
            assert lost is not None
            assert not lost.is_set()
            # Steal it outright, as a runner would after the holder stalled past its ttl.
            await holder.database.collection("leases").update_one(
                {"_id": "proj"}, {"$set": {"expires_at_ms": 0}}
            )
            assert await thief.try_acquire("proj") is not None
            await asyncio.wait_for(lost.wait(), timeout=10 * self.short_ttl + 5)
        current = await thief.holder("proj")
        assert current is not None, "the loser must not release it"
        assert current.owner == "b"
