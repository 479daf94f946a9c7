"""In-memory LRU of rendered variants with a byte budget, and single-flight rendering:
concurrent requests for the same variant wait for one render instead of each doing it."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class ByteLRU(Generic[V]):
    def __init__(
        self,
        budget: int,
        size_of: Callable[[V], int],
        *,
        on_hit: Callable[[], None] = lambda: None,
        on_miss: Callable[[], None] = lambda: None,
    ) -> None:
        self.budget = budget
        self.used = 0
        self._size_of = size_of
        self._on_hit = on_hit
        self._on_miss = on_miss
        self._items: OrderedDict[str, V] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        size = self._size_of(value)
        if size > self.budget:
            return  # larger than the whole budget: never cached
        old = self._items.pop(key, None)
        if old is not None:
            self.used -= self._size_of(old)
        self._items[key] = value
        self.used += size
        while self.used > self.budget:
            _, evicted = self._items.popitem(last=False)
            self.used -= self._size_of(evicted)

    async def get_or_make(
        self, key: str, make: Callable[[], Awaitable[V]], *, personal: tuple[type[Exception], ...] = ()
    ) -> V:
        """The value, made once for everyone who asks while it is being made. `personal`:
        failures that concern only the caller that made it (a refusal for its client): the
        others try to make it themselves."""
        if self.budget <= 0:  # caching off means every request renders, even concurrent ones
            self._on_miss()
            return await make()
        while True:
            cached = self.get(key)
            if cached is not None:
                self._on_hit()
                return cached
            pending = self._inflight.get(key)
            if pending is None:
                break
            self._on_hit()  # rendered once, for every concurrent request
            try:
                return await asyncio.shield(pending)
            except personal:
                continue
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not pending.cancelled() or (task is not None and task.cancelling()):
                    raise
                # The request making it went away, and its render with it; this one is still
                # here, so it makes the variant itself.
        self._on_miss()
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await make()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as error:
            future.set_exception(error)
            future.exception()  # mark retrieved: waiters, if any, re-raise it
            raise
        else:
            future.set_result(value)
            self.put(key, value)
            return value
        finally:
            del self._inflight[key]
