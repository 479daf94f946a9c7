"""The on-demand variant cache: a byte budget, LRU order, and one render per variant."""

from __future__ import annotations

import asyncio

import pytest

from imageserver.cache import ByteLRU


def test_least_recently_used_entries_go_first_when_over_budget() -> None:
    cache: ByteLRU[bytes] = ByteLRU(10, len)
    cache.put("a", b"aaaa")
    cache.put("b", b"bbbb")
    assert cache.get("a") == b"aaaa"  # a is now the most recent
    cache.put("c", b"cccc")
    assert cache.get("b") is None
    assert cache.get("a") == b"aaaa" and cache.get("c") == b"cccc"
    assert cache.used == 8
    cache.put("huge", b"x" * 11)  # larger than the budget: not cached, nothing evicted
    assert cache.get("huge") is None and len(cache) == 2


async def test_concurrent_requests_for_one_variant_render_it_once() -> None:
    renders = 0
    hits: list[int] = []
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len, on_hit=lambda: hits.append(1))

    async def render() -> bytes:
        nonlocal renders
        renders += 1
        await asyncio.sleep(0.05)
        return b"variant"

    results = await asyncio.gather(*(cache.get_or_make("k", render) for _ in range(20)))
    assert results == [b"variant"] * 20
    assert renders == 1
    assert len(hits) == 19
    assert await cache.get_or_make("k", render) == b"variant" and renders == 1


async def test_a_zero_budget_turns_caching_and_coalescing_off() -> None:
    renders = 0
    cache: ByteLRU[bytes] = ByteLRU(0, len)

    async def render() -> bytes:
        nonlocal renders
        renders += 1
        await asyncio.sleep(0.01)
        return b"variant"

    await asyncio.gather(*(cache.get_or_make("k", render) for _ in range(5)))
    assert renders == 5 and len(cache) == 0


async def test_a_failed_render_reaches_every_waiter_and_is_not_cached() -> None:
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len)

    async def broken() -> bytes:
        await asyncio.sleep(0.01)
        raise ValueError("cannot render")

    outcomes = await asyncio.gather(
        *(cache.get_or_make("k", broken) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(o, ValueError) for o in outcomes)

    async def fine() -> bytes:
        return b"ok"

    assert await cache.get_or_make("k", fine) == b"ok"


async def test_a_waiter_whose_render_was_cancelled_makes_it_itself_instead_of_hanging() -> None:
    """The request rendering a variant hangs up: the others waiting for the same variant are
    still there, so one of them renders it; none hangs, none is cancelled for another."""
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len)
    makers = 0

    async def slow() -> bytes:
        nonlocal makers
        makers += 1
        await asyncio.sleep(0.05)
        return b"made"

    first = asyncio.ensure_future(cache.get_or_make("k", slow))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.get_or_make("k", slow))
    third = asyncio.ensure_future(cache.get_or_make("k", slow))
    await asyncio.sleep(0)
    first.cancel()
    assert await asyncio.wait_for(second, 1) == b"made"
    assert await asyncio.wait_for(third, 1) == b"made"
    assert first.cancelled() and makers == 2  # the cancelled one, then one for both waiters
    assert cache.get("k") == b"made"


class Refused(Exception):
    """A refusal that concerns only the caller that made the variant."""


async def test_a_refusal_for_the_caller_that_made_it_is_not_handed_to_the_others() -> None:
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len)

    async def refused() -> bytes:
        await asyncio.sleep(0.02)
        raise Refused

    async def made() -> bytes:
        return b"mine"

    first = asyncio.ensure_future(cache.get_or_make("k", refused, personal=(Refused,)))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.get_or_make("k", made, personal=(Refused,)))
    with pytest.raises(Refused):
        await first
    assert await asyncio.wait_for(second, 1) == b"mine"  # made it itself


async def test_other_failures_are_shared_by_everyone_who_waited() -> None:
    cache: ByteLRU[bytes] = ByteLRU(1 << 20, len)

    async def broken() -> bytes:
        await asyncio.sleep(0.02)
        raise ValueError("corrupt original")

    first = asyncio.ensure_future(cache.get_or_make("k", broken, personal=(Refused,)))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(cache.get_or_make("k", broken, personal=(Refused,)))
    for task in (first, second):
        with pytest.raises(ValueError, match="corrupt"):
            await task
