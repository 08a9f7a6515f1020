"""The milter listener: TCP (``host:port``) or a unix socket (``unix:/path``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence

from gateway.config import parse_listen
from gateway.logsetup import get_logger
from gateway.pipeline import MessageDecider

from ._session import MilterSession

__all__ = ["MilterServer"]

_log = get_logger("cm-gateway.milter")


class MilterServer:
    """Accepts milter connections from the MTA; one ``MilterSession`` each."""

    def __init__(
        self,
        listen: str,
        decider: MessageDecider,
        *,
        trusted_networks: Sequence[str] = (),
        buffer_limit: int,
        timeout: float = 600.0,
        reuse_port: bool = False,
    ) -> None:
        self.listen = listen
        self.decider = decider
        self._trusted = list(trusted_networks)
        self._limit = buffer_limit
        self._timeout = timeout
        self._reuse_port = reuse_port
        self._server: asyncio.Server | None = None
        self.sessions: dict[asyncio.Task[None], MilterSession] = {}

    @property
    def address(self) -> str:
        """``host:port`` (or ``unix:/path``) actually listened on."""
        assert self._server is not None, "start() first"
        if self.listen.startswith("unix:"):
            return self.listen
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    async def start(self) -> None:
        if self.listen.startswith("unix:"):
            path = self.listen[len("unix:") :]
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)  # a socket left by a previous run
            self._server = await asyncio.start_unix_server(self._accept, path=path)
        else:
            host, port = parse_listen(self.listen)
            self._server = await asyncio.start_server(
                self._accept, host, port, reuse_address=True, reuse_port=self._reuse_port or None
            )
        _log.info("milter_listening", listen=self.address)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        session = MilterSession(
            reader,
            writer,
            self.decider,
            trusted_networks=self._trusted,
            buffer_limit=self._limit,
            timeout=self._timeout,
        )
        task = asyncio.current_task()
        assert task is not None
        self.sessions[task] = session
        try:
            await session.run()
        except Exception as exc:
            # A bug of ours must not take the listener down; the MTA applies its
            # milter_default_action to this connection.
            _log.error("milter_session_failed", error_type=type(exc).__name__)
        finally:
            self.sessions.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def aclose(self, grace: float = 30.0) -> None:
        """Stop accepting; sessions deciding a message get ``grace`` seconds to answer,
        the others are closed at once (the MTA retries or applies its default action)."""
        if self._server is not None:
            self._server.close()
        busy = [t for t, s in self.sessions.items() if s.in_eom]
        for session in self.sessions.values():
            session.closing = True
        for task, _ in list(self.sessions.items()):
            if task not in busy:
                task.cancel()
        if busy:
            _, late = await asyncio.wait(busy, timeout=grace)
            for task in late:
                task.cancel()
        remaining = list(self.sessions)
        if remaining:
            await asyncio.wait(remaining, timeout=5)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
        if self.listen.startswith("unix:"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.listen[len("unix:") :])
