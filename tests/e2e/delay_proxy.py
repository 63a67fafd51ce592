"""A TCP relay that delivers every byte `delay` seconds late, each way: an agent that joins
through it is that much farther from the server (this machine's kernel has no netem qdisc)."""

from __future__ import annotations

import asyncio
import threading
from typing import Optional, Tuple


class DelayProxy:
    def __init__(self, listen: Tuple[str, int], target: Tuple[str, int], delay: float) -> None:
        self.delay = delay
        self._listen = listen
        self._target = target
        self._loop = asyncio.new_event_loop()
        self._server: Optional[asyncio.base_events.Server] = None
        self._ready = threading.Event()
        self._writers: set = set()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)
        assert self._server is not None, "the delay proxy did not start"
        self.address = self._server.sockets[0].getsockname()[:2]

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._accept, *self._listen)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                # Same delay for every chunk: they stay in order.
                loop.call_later(self.delay, writer.write, data)
            await asyncio.sleep(self.delay)
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer),
                             return_exceptions=True)

    def close(self) -> None:
        """Closes the listener and every relayed connection, then the loop."""

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            for writer in self._writers:
                writer.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()
