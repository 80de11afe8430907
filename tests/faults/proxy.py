"""A TCP proxy the test owns, so an outage can be staged without stopping a shared server.

`FaultProxy(port)` listens on a free 127.0.0.1 port and forwards every connection to the real
server. It runs its own event loop in its own thread, so it serves in-process clients (whose
loop is pytest's) and subprocesses alike, and a client that blocks its loop cannot stall it.

    cut()          close every live connection and refuse new ones (the server went away)
    blackhole()    keep sockets open but forward nothing (a network partition: commands hang)
    lose_replies() forward requests to the server, drop its answers (a command may have run
                   although its client never hears of it: the ambiguous failure); follow it
                   with cut(), as the stream is out of step from then on
    restore()      listen and forward again. Connections caught in a blackhole are reset, as
                   when a partition outlasts TCP's retransmissions: what they held never arrives
"""
from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any

from tests.servers import free_port

UP, CUT, BLACKHOLE, LOSE_REPLIES = "up", "cut", "blackhole", "lose replies"

class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.mode = UP
        self.accepted = 0                    # connections taken since start: a reconnect shows here
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"proxy-{self.port}", daemon=True)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._requests = asyncio.Event()     # set: client -> server bytes flow
        self._replies = asyncio.Event()      # set: server -> client bytes flow

    # -- control, from the test's thread --------------------------------------------------

    def start(self) -> "FaultProxy":
        self._thread.start()
        self._call(self._listen())
        self._call(self._set_flow(True, True))
        return self

    def cut(self) -> None:
        self.mode = CUT
        self._call(self._cut())

    def blackhole(self) -> None:
        self.mode = BLACKHOLE
        self._call(self._set_flow(False, False))

    def lose_replies(self) -> None:
        self.mode = LOSE_REPLIES
        self._call(self._set_flow(True, True))

    def restore(self) -> None:
        if self.mode == CUT:
            self._call(self._listen())
        elif self.mode == BLACKHOLE:
            self._call(self._reset_links())
        self.mode = UP
        self._call(self._set_flow(True, True))

    def close(self) -> None:
        if self._thread.is_alive():
            self._call(self._shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # -- inside the proxy's loop ----------------------------------------------------------

    async def _listen(self) -> None:
        # SO_REUSEADDR (asyncio's default) lets the port be taken again right after a cut.
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _set_flow(self, requests: bool, replies: bool) -> None:
        for event, flowing in ((self._requests, requests), (self._replies, replies)):
            event.set() if flowing else event.clear()

    async def _cut(self) -> None:
        if self._server is not None:
            self._server.close()             # refuse new connections: nothing listens on the port
            self._server = None
        await self._reset_links()

    async def _shutdown(self) -> None:
        await self._cut()
        others = asyncio.all_tasks() - {asyncio.current_task()}
        if others:
            await asyncio.wait(others, timeout=2)

    async def _reset_links(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()         # a reset, as when the server process dies
        self._links.clear()

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        self._links |= {client_w, server_w}
        await asyncio.gather(self._pump(client_r, server_w, self._requests),
                             self._pump(server_r, client_w, self._replies))
        self._links -= {client_w, server_w}

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, flowing: asyncio.Event) -> None:
        try:
            while data := await reader.read(65536):
                await flowing.wait()         # a blackhole holds the bytes here, unread by the peer
                if writer.transport.is_closing():
                    break                    # reset meanwhile: the held bytes are lost
                if self.mode == LOSE_REPLIES and flowing is self._replies:
                    continue                 # read from the server, never delivered
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()
