"""Named TCP backends on loopback: each greets with its name, then echoes lines."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Backend:
    """A backend that says `NAME` on connect and answers each line with `NAME:line`."""

    def __init__(self, name: str, host: str = "127.0.0.1") -> None:
        self.name = name
        self.host = host
        self.port = 0
        self.accepted = 0
        self._server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, self.host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        writer.write(f"{self.name}\n".encode())
        try:
            while line := await reader.readline():
                writer.write(f"{self.name}:".encode() + line)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Client:
    """One client connection through the forwarder."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = ""

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1", source: str = "") -> Client:
        """Connect to `host:port`, from the address `source` if given."""
        local = (source, 0) if source else None
        reader, writer = await asyncio.open_connection(host, port, local_addr=local)
        client = cls(reader, writer)
        client.greeting = (await asyncio.wait_for(reader.readline(), 5)).decode().strip()
        return client

    async def ask(self, text: str) -> str:
        self.writer.write(text.encode() + b"\n")
        await self.writer.drain()
        return (await asyncio.wait_for(self.reader.readline(), 5)).decode().strip()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def reached(port: int) -> str:
    """Connect through the forwarder once; the name of the backend that answered ('' if none)."""
    try:
        client = await Client.connect(port)
    except (ConnectionError, asyncio.IncompleteReadError):
        return ""
    try:
        return client.greeting
    finally:
        await client.close()


# `await started(NAME, ...)`: backends started by name (the `started` fixture).
Starter = Callable[..., Awaitable[list[Backend]]]
