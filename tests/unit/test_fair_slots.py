"""The places where a replica runs jobs: handed to the waiting owners in turn."""

from __future__ import annotations

import asyncio

from serve_app.jobs.fair_slots import FairSlots


def run(scenario):
    return asyncio.run(scenario())


async def settle() -> None:
    """Let every task that can run now run."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiter(slots: FairSlots, owner: str, started: list[str], name: str) -> asyncio.Task:
    async def wait() -> bool:
        got = await slots.acquire_within(owner, 10)
        started.append(name)
        return got

    return asyncio.ensure_future(wait())


def test_places_up_to_the_bound_are_taken_at_once():
    async def scenario():
        slots = FairSlots(2)
        got = [await slots.acquire_within("a", 0), await slots.acquire_within("b", 0)]
        third = await slots.acquire_within("c", 0)
        return got, third, slots.running("a"), slots.running("c")

    assert run(scenario) == ([True, True], False, 1, 0)


def test_a_freed_place_goes_to_the_waiting_owner_with_the_fewest_running():
    async def scenario():
        slots, started = FairSlots(2), []
        assert await slots.acquire_within("alice", 0) and await slots.acquire_within("alice", 0)
        # Alice's backlog came first; Bob's one job comes after it.
        tasks = [waiter(slots, "alice", started, f"alice-{n}") for n in (3, 4, 5)]
        await settle()
        tasks.append(waiter(slots, "bob", started, "bob-1"))
        await settle()
        slots.release("alice")  # alice runs 1, bob 0: bob's job goes first
        await settle()
        slots.release("alice")  # alice 0 running, bob 1: alice's next, in her order
        await settle()
        slots.release("bob")
        await settle()
        return started, slots.running("alice"), slots.running("bob")

    started, alice, bob = run(scenario)
    assert started == ["bob-1", "alice-3", "alice-4"]
    assert (alice, bob) == (2, 0)


def test_owners_with_backlogs_take_turns_at_one_place():
    async def scenario():
        slots, started = FairSlots(1), []
        assert await slots.acquire_within("alice", 0)
        for name in ("alice-2", "alice-3", "bob-1", "bob-2"):
            waiter(slots, name.split("-")[0], started, name)
            await settle()
        for owner in ("alice", "bob", "alice", "bob"):
            slots.release(owner)
            await settle()
        return started

    assert run(scenario) == ["bob-1", "alice-2", "bob-2", "alice-3"]


def test_one_owner_is_served_first_come_first_served():
    async def scenario():
        slots, started = FairSlots(1), []
        assert await slots.acquire_within("", 0)
        for n in range(4):
            waiter(slots, "", started, str(n))
            await settle()
        for _ in range(4):
            slots.release("")
            await settle()
        return started

    assert run(scenario) == ["0", "1", "2", "3"]


def test_a_wait_that_times_out_or_is_cancelled_holds_nothing():
    async def scenario():
        slots = FairSlots(1)
        assert await slots.acquire_within("a", 0)
        timed_out = await slots.acquire_within("b", 0.01)
        cancelled = asyncio.ensure_future(slots.acquire_within("c", 10))
        await settle()
        cancelled.cancel()
        await settle()
        slots.release("a")
        free_again = await slots.acquire_within("d", 0)
        return timed_out, cancelled.cancelled(), free_again, slots.running("c")

    assert run(scenario) == (False, True, True, 0)


def test_a_place_handed_over_as_its_wait_is_cancelled_is_given_back():
    async def scenario():
        slots = FairSlots(1)
        assert await slots.acquire_within("a", 0)
        waiting = asyncio.ensure_future(slots.acquire_within("b", 10))
        await settle()
        slots.release("a")  # hands the place to b's wait ...
        waiting.cancel()  # ... which is cancelled before it sees it
        await settle()
        return waiting.cancelled(), slots.running("b"), await slots.acquire_within("c", 0)

    assert run(scenario) == (True, 0, True)
