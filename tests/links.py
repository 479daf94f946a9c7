"""Networks between processes on 127.0.0.1 that tests control: a link a test can black-hole,
and a readiness-aware load balancer.

Black-holed, a link accepts connections and reads what they send, but never answers and
never closes them: a peer whose network ate its packets, the case no timeout-less client
survives. Connections open when the hole opens are cut, so pooled ones fall in too.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

from testbed.processes import free_port


class _Served:
    """A TCP server on 127.0.0.1 with its own event loop in a thread: started by the
    constructor, stopped by `close()` (every connection's handler ends before the loop)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._run, daemon=True, name=f"{type(self).__name__}-{self.port}"
        )
        self._thread.start()
        self._ready.wait(5)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    async def _before_serving(self) -> None:
        """Runs once the port listens, before the constructor returns."""

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def serve() -> None:
            server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
            await self._before_serving()
            self._ready.set()
            async with server:
                await server.serve_forever()

        with contextlib.suppress(asyncio.CancelledError):
            self._loop.run_until_complete(serve())
        rest = asyncio.all_tasks(self._loop)
        for task in rest:
            task.cancel()
        self._loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
        self._loop.close()

    def close(self) -> None:
        def stop() -> None:
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(stop)
        self._thread.join(5)


class Link(_Served):
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.black_holed = False
        self._writers: set[asyncio.StreamWriter] = set()
        super().__init__()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            if self.black_holed:
                while await reader.read(65536):
                    pass
                return
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            except OSError:
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.close()
        finally:
            self._writers.discard(writer)
            writer.close()

    def _cut_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    def black_hole(self) -> None:
        self.black_holed = True
        self._loop.call_soon_threadsafe(self._cut_all)

    def restore(self) -> None:
        self.black_holed = False
        self._loop.call_soon_threadsafe(self._cut_all)  # the held connections hang up


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while chunk := await source.read(65536):
            sink.write(chunk)
            await sink.drain()
    with contextlib.suppress(ConnectionError, OSError, RuntimeError):
        sink.write_eof()


@contextlib.contextmanager
def links(*ports: int) -> Iterator[list[Link]]:
    made = [Link(port) for port in ports]
    try:
        yield made
    finally:
        for link in made:
            link.close()


class Balancer(_Served):
    """A readiness-aware TCP load balancer, as a Service or the gateway is: new connections go
    round-robin to the backends whose /readyz answered 200 at the last check (every 0.1 s).
    A connection it cannot open to the backend it chose is counted in `refused` and cut, so a
    client sees it."""

    def __init__(self, ports: list[int], interval: float = 0.1) -> None:
        self.ports = ports
        self.interval = interval
        self.ready: list[int] = []
        self.refused = 0
        self.connections = 0
        self._turn = 0
        self._checks: asyncio.Future[None] | None = None
        super().__init__()

    async def _before_serving(self) -> None:
        await self._check()
        self._checks = asyncio.ensure_future(self._check_forever())  # cancelled by close()

    async def _is_ready(self, port: int) -> bool:
        try:
            async with asyncio.timeout(1):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n")
                status = await reader.readline()
                writer.close()
                return status.split()[1:2] == [b"200"]
        except (OSError, TimeoutError, IndexError):
            return False

    async def _check(self) -> None:
        answers = await asyncio.gather(*(self._is_ready(port) for port in self.ports))
        self.ready = [port for port, ok in zip(self.ports, answers, strict=True) if ok]

    async def _check_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self._check()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        ready = list(self.ready)
        try:
            if not ready:
                self.refused += 1
                return
            self._turn += 1
            port = ready[self._turn % len(ready)]
            try:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                self.refused += 1
                return
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
