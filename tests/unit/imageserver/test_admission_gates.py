"""Admission gates: a request is admitted, waits a bounded time in a bounded, fair waiting
room, or is refused at once; capacity is never exceeded, never leaked, one client holds at
most its share, and a waiter whose client hung up never gets what it waited for."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imageserver.admission import ClientLimit, Gate, Grant, Holding, Shed

FOREVER = 60.0  # a max_wait no test reaches: a waiter that still waits at the end is a failure


def gate(capacity: int, *, max_waiting: int = 8, max_wait: float = FOREVER) -> Gate:
    return Gate("memory", capacity, max_waiting=max_waiting, max_wait=max_wait)


async def settle() -> None:
    """Let every task that can run do so: loop turns, not time."""
    for _ in range(10):
        await asyncio.sleep(0)


async def queue(g: Gate, weight: int, client: str) -> asyncio.Task[Grant]:
    """A waiter, in the room before the next one arrives (arrival order is part of fairness)."""
    task = asyncio.create_task(g.acquire(weight, client))
    await settle()
    return task


def granted(tasks: dict[str, asyncio.Task[Grant]]) -> set[str]:
    return {label for label, task in tasks.items() if task.done() and not task.cancelled()}


# -- admitted at once ------------------------------------------------------------------------


async def test_requests_that_fit_are_admitted_at_once_and_weights_add_up() -> None:
    g = gate(10)
    first = await g.acquire(3, "a")
    second = await g.acquire(7, "b")
    assert g.in_use == 10
    assert g.waiting == 0
    g.release(first)
    assert g.in_use == 7
    g.release(second)
    assert g.in_use == 0


async def test_releasing_a_grant_twice_gives_back_its_weight_once() -> None:
    g = gate(10)
    kept = await g.acquire(4, "a")
    twice = await g.acquire(5, "a")
    g.release(twice)
    g.release(twice)
    assert g.in_use == 4
    g.release(kept)
    assert g.in_use == 0


def test_a_gate_without_capacity_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        gate(0)


# -- refused at once -------------------------------------------------------------------------


async def test_a_request_larger_than_the_whole_capacity_is_413_at_once() -> None:
    g = Gate("memory", 10, max_waiting=8, max_wait=FOREVER, show=lambda n: f"{n} units")
    async with asyncio.timeout(5):  # "at once": it must not sit out max_wait
        with pytest.raises(Shed) as shed:
            await g.acquire(11, "a")
    assert shed.value.status == 413
    assert shed.value.reason == "memory_exceeds_capacity"
    assert "11 units" in shed.value.message
    assert "10 units" in shed.value.message
    assert g.in_use == 0
    assert g.waiting == 0


async def test_when_the_waiting_room_is_full_the_next_request_is_503_at_once() -> None:
    g = gate(1, max_waiting=2)
    holder = await g.acquire(1, "a")
    waiters = [await queue(g, 1, "b"), await queue(g, 1, "c")]
    assert g.waiting == 2
    async with asyncio.timeout(5):
        with pytest.raises(Shed) as shed:
            await g.acquire(1, "d")
    assert shed.value.status == 503
    assert shed.value.reason.endswith("_queue_full")
    assert g.waiting == 2  # the refused one never joined
    g.release(holder)
    for task in waiters:
        g.release(await task)
    assert g.in_use == 0


async def test_a_request_that_fits_is_admitted_even_when_the_waiting_room_is_full() -> None:
    g = gate(10, max_waiting=1)
    holder = await g.acquire(5, "a")
    big = await queue(g, 8, "b")  # waits: 5 + 8 > 10
    assert g.waiting == 1
    # 5 + 2 fits. With max_waiting=2 the same call joins the room and _wake admits it at once.
    small = await g.acquire(2, "c")
    assert g.in_use == 7
    g.release(small)
    g.release(holder)
    g.release(await big)


# -- bounded wait ----------------------------------------------------------------------------


async def test_a_waiter_past_max_wait_is_503_leaves_the_room_and_holds_nothing() -> None:
    g = gate(10, max_wait=0.01)
    holder = await g.acquire(10, "a")
    with pytest.raises(Shed) as shed:
        await g.acquire(4, "b")
    assert shed.value.status == 503
    assert shed.value.reason.endswith("_wait")
    assert g.waiting == 0
    assert g.in_use == 10  # the holder's weight only
    g.release(holder)
    assert g.in_use == 0  # nothing was granted to the one that gave up


async def test_a_waiter_whose_client_hung_up_leaves_the_room_and_never_gets_the_grant() -> None:
    abandoned: list[Gate] = []
    g = Gate("memory", 10, max_waiting=8, max_wait=FOREVER, on_abandon=abandoned.append)
    holder = await g.acquire(10, "a")
    hung_up = await queue(g, 4, "b")
    assert g.waiting == 1
    hung_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await hung_up
    assert g.waiting == 0
    assert abandoned == [g]  # counted, so abandoned waits show on a dashboard
    g.release(holder)
    await settle()
    assert g.in_use == 0


async def test_a_grant_given_in_the_same_turn_as_the_hang_up_is_given_back() -> None:
    g = gate(10)
    holder = await g.acquire(10, "a")
    hung_up = await queue(g, 4, "b")
    g.release(holder)  # grants the waiter synchronously...
    assert g.in_use == 4
    hung_up.cancel()  # ...whose task has not resumed yet when its client goes away
    with pytest.raises(asyncio.CancelledError):
        await hung_up
    assert g.in_use == 0
    assert g.waiting == 0


# -- fairness --------------------------------------------------------------------------------


async def test_room_goes_first_to_the_waiter_whose_client_holds_least() -> None:
    g = gate(2)
    await g.acquire(1, "a")  # "a" keeps one unit throughout
    other = await g.acquire(1, "x")
    tasks = {"a1": await queue(g, 1, "a"), "a2": await queue(g, 1, "a"), "b": await queue(g, 1, "b")}
    g.release(other)
    await settle()
    # "a" holds one unit and "b" none: b overtakes a's earlier backlog.
    assert granted(tasks) == {"b"}
    g.release(tasks["b"].result())
    await settle()
    assert granted(tasks) == {"b", "a1"}  # then a's requests, in arrival order
    g.release(tasks["a1"].result())
    await settle()
    assert granted(tasks) == {"b", "a1", "a2"}


async def test_one_clients_backlog_does_not_stand_in_front_of_another_client() -> None:
    g = gate(1)
    holder = await g.acquire(1, "x")
    order: list[str] = []

    async def take_and_go(label: str) -> None:
        grant = await g.acquire(1, label[0])
        order.append(label)
        g.release(grant)

    tasks = [asyncio.create_task(take_and_go(label)) for label in ("a1", "a2", "a3", "b")]
    await settle()
    assert g.waiting == 4
    g.release(holder)
    await asyncio.gather(*tasks)
    # a1 first is fair (a tie, broken by arrival); then b, not the rest of a's backlog.
    # Actual: ["a1", "a2", "a3", "b"].
    assert order == ["a1", "b", "a2", "a3"]


async def test_fairness_holds_within_one_release_that_admits_several() -> None:
    g = gate(2)
    holder = await g.acquire(2, "x")
    tasks = {"a1": await queue(g, 1, "a"), "a2": await queue(g, 1, "a"), "b": await queue(g, 1, "b")}
    g.release(holder)
    await settle()
    # Once a1 is in, "a" holds 1 and "b" 0: b goes next, though it came after a2.
    assert granted(tasks) == {"a1", "b"}


# -- a client's share ------------------------------------------------------------------------


async def test_a_client_holding_its_whole_share_waits_its_turn_instead_of_a_429() -> None:
    """Past its share a client waits (a render waiting for a thread is normal), in the same
    room as everyone else; the per-client limit of requests in flight bounds how many."""
    g = gate(1)  # the default share is the whole gate
    holder = await g.acquire(1, "a")
    mine = await queue(g, 1, "a")
    other = await queue(g, 1, "b")
    assert g.waiting == 2
    g.release(holder)
    await settle()
    assert mine.done() and not other.done()  # both hold nothing, neither served yet: arrival
    g.release(mine.result())
    await settle()
    assert other.done()
    g.release(other.result())
    assert g.in_use == 0


async def test_one_client_may_hold_only_its_share_and_more_than_the_share_is_413() -> None:
    g = Gate("memory", 10, max_waiting=8, max_wait=FOREVER, client_share=0.5, show=lambda n: f"{n} units")
    with pytest.raises(Shed) as too_big:
        await g.acquire(6, "a")
    assert (too_big.value.status, too_big.value.reason) == (413, "memory_exceeds_capacity")
    assert "6 units" in too_big.value.message
    assert "5 units" in too_big.value.message
    first = await g.acquire(3, "a")
    over_share = await queue(g, 3, "a")  # 6 would be past a's share of 5: it waits
    await g.acquire(5, "b")  # the other half is there for everyone else
    assert not over_share.done()
    g.release(first)
    await settle()
    assert over_share.done() and g.in_use == 8


async def test_queued_requests_of_one_client_never_take_it_past_its_share() -> None:
    g = Gate("memory", 4, max_waiting=8, max_wait=FOREVER, client_share=0.5)
    others = [await g.acquire(2, "b"), await g.acquire(2, "c")]
    first, second = await queue(g, 2, "a"), await queue(g, 2, "a")  # a holds 0 as each arrives
    for grant in others:
        g.release(grant)
    await settle()
    # Share 2 of 4: one of them may go in, the other waits for it.
    assert [first.done(), second.done()] == [True, False]
    first.cancel()
    second.cancel()


# -- invariants under any interleaving -------------------------------------------------------

CAPACITY = 4
MAX_WAITING = 2
REFUSALS = {(503, "memory_queue_full"), (413, "memory_exceeds_capacity")}
Op = tuple[str, int, int]
OPS = st.lists(
    st.tuples(
        # Acquires outnumber the rest so the room fills up, and overflows, often.
        st.sampled_from(["acquire", "acquire", "acquire", "release", "cancel"]),
        st.integers(0, 63),  # the client (of three) or which task to release or cancel
        st.integers(1, CAPACITY),  # the weight
    ),
    max_size=30,
)


async def _run(ops: list[Op], share: float) -> None:
    g = Gate("memory", CAPACITY, max_waiting=MAX_WAITING, max_wait=FOREVER, client_share=share)
    tasks: list[asyncio.Task[Grant]] = []
    weights: list[int] = []
    clients: list[str] = []
    released: set[int] = set()

    def holders() -> list[int]:
        return [i for i, t in enumerate(tasks) if t.done() and not t.cancelled() and t.exception() is None]

    def check() -> None:
        held = sum(tasks[i].result().weight for i in holders() if i not in released)
        pending = [t for t in tasks if not t.done()]
        assert 0 <= g.in_use <= CAPACITY
        assert g.in_use == held  # nothing leaked, nothing counted twice
        assert g.waiting == len(pending) <= MAX_WAITING
        for t in tasks:
            if t.done() and not t.cancelled() and (error := t.exception()) is not None:
                assert isinstance(error, Shed), error
                assert (error.status, error.reason) in REFUSALS
        # Nobody waits for room that is there, unless its client already holds its share.
        by_client = Counter(clients[i] for i in holders() if i not in released for _ in range(weights[i]))
        for i, t in enumerate(tasks):
            if not t.done():
                no_room = weights[i] > CAPACITY - g.in_use
                at_share = by_client[clients[i]] + weights[i] > g.client_limit
                assert no_room or at_share, (i, weights[i], g.in_use, by_client)

    for kind, a, b in ops:
        if kind == "acquire":
            tasks.append(asyncio.create_task(g.acquire(b, f"client{a % 3}")))
            weights.append(b)
            clients.append(f"client{a % 3}")
        elif kind == "release" and holders():
            i = holders()[a % len(holders())]  # may be one already released: must be harmless
            g.release(tasks[i].result())
            released.add(i)
        elif kind == "cancel" and tasks:
            tasks[a % len(tasks)].cancel()
        await settle()
        check()

    # Give everything back, as often as needed: every waiter must be served, none waits forever.
    for _ in range(len(tasks) + 1):
        for i in holders():
            if i not in released:
                g.release(tasks[i].result())
                released.add(i)
        await settle()
    assert all(t.done() for t in tasks)
    check()
    assert g.in_use == 0
    assert g.waiting == 0


@settings(max_examples=300, deadline=None)
@given(OPS, st.sampled_from([1.0, 0.5]))
def test_capacity_is_never_exceeded_never_leaked_and_every_waiter_is_served(
    ops: list[Op], share: float
) -> None:
    asyncio.run(_run(ops, share))


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "retry_after"),
    [(429, 1), (503, 1), (413, None), (408, None)],
)
def test_retry_after_is_offered_only_where_retrying_can_help(status: int, retry_after: int | None) -> None:
    assert Shed(status, "reason", "message").retry_after == retry_after


# -- per-client limit ------------------------------------------------------------------------


def test_a_client_past_its_limit_is_429_and_other_clients_are_unaffected() -> None:
    limit = ClientLimit(2)
    limit.enter("a")
    limit.enter("a")
    with pytest.raises(Shed) as shed:
        limit.enter("a")
    assert (shed.value.status, shed.value.reason) == (429, "client_concurrency")
    limit.enter("b")
    limit.enter("b")


def test_leaving_frees_a_slot_for_the_same_client() -> None:
    limit = ClientLimit(1)
    limit.enter("a")
    limit.leave("a")
    limit.enter("a")
    with pytest.raises(Shed):
        limit.enter("a")


def test_a_per_client_limit_below_one_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ClientLimit(0)


# -- holding grants for the life of a request ------------------------------------------------


async def test_grants_held_by_a_request_are_released_when_it_ends() -> None:
    memory, threads = gate(100), Gate("render", 2, max_waiting=2, max_wait=FOREVER)
    with Holding() as held:
        await held.take(memory, 30, "a")
        await held.take(threads, 1, "a")
        assert (memory.in_use, threads.in_use) == (30, 1)
    assert (memory.in_use, threads.in_use) == (0, 0)


async def test_grants_are_released_when_the_request_fails() -> None:
    memory = gate(100)
    with pytest.raises(RuntimeError), Holding() as held:
        await held.take(memory, 30, "a")
        raise RuntimeError("the handler failed")
    assert memory.in_use == 0


async def test_grants_taken_before_a_refusal_are_released() -> None:
    memory, threads = gate(100), Gate("render", 1, max_waiting=0, max_wait=FOREVER)
    other = await threads.acquire(1, "b")
    with pytest.raises(Shed), Holding() as held:
        await held.take(memory, 30, "a")
        await held.take(threads, 1, "a")  # no thread and no waiting room: 503
    assert memory.in_use == 0
    threads.release(other)


async def test_memory_stays_held_until_the_render_thread_ends_even_after_the_request_ended() -> None:
    released = asyncio.Event()

    def on_change(g: Gate) -> None:
        if g.in_use == 0:
            released.set()

    memory = Gate("memory", 100, max_waiting=2, max_wait=FOREVER, on_change=on_change)
    finish = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        try:
            with Holding() as held:
                await held.take(memory, 30, "a")
                work = pool.submit(finish.wait, 10)
                held.busy_until(work)
            # The request is over (its client hung up) but the thread still uses the memory.
            await asyncio.sleep(0.05)
            assert memory.in_use == 30
            assert not released.is_set()
        finally:
            finish.set()
        async with asyncio.timeout(5):
            await released.wait()
    assert memory.in_use == 0


async def test_a_render_already_finished_at_exit_releases_at_once() -> None:
    memory = gate(100)
    with ThreadPoolExecutor(1) as pool:
        work = pool.submit(lambda: None)
        work.result()
        with Holding() as held:
            await held.take(memory, 30, "a")
            held.busy_until(work)
    assert memory.in_use == 0


async def test_a_client_held_back_only_by_its_own_share_is_told_429_not_503() -> None:
    """Its own requests hold its share: waiting longer is the client's doing, not an
    overload, so it must not spend the error budget (a 503 would)."""
    g = Gate("memory", 10, max_waiting=8, max_wait=0.05, client_share=0.5)
    mine = await g.acquire(5, "a")
    with pytest.raises(Shed) as refused:
        await g.acquire(1, "a")
    assert (refused.value.status, refused.value.reason) == (429, "memory_client_share")
    assert refused.value.retry_after == 1
    other = await g.acquire(5, "b")  # the rest is there for others
    with pytest.raises(Shed) as busy:
        await g.acquire(1, "c")  # held back by the others: that is an overload
    assert (busy.value.status, busy.value.reason) == (503, "memory_wait")
    g.release(mine)
    g.release(other)
    assert g.in_use == 0 and g.waiting == 0
