"""``[smtp] workers = N`` (N > 1): the parent process and its children.

The parent starts N worker processes (multiprocessing, spawn), each running
``gateway.ops.serve`` on the shared port (SO_REUSEPORT); the workers add up each other's
metrics over Unix sockets in a private directory (``_metrics_peers``). With ``[classifier]
shared_batcher`` (the default) it first starts the batcher process (``ops._batcher_process``),
which classifies for all of them over a Unix socket in a private directory, and waits
until it listens. Then the parent only forwards signals and waits (SIGUSR1, and SIGHUP
without a terminal: reload; SIGHUP on a terminal: stop).

Stopping: SIGTERM/SIGINT go to the workers; the batcher gets SIGTERM once the last
worker has exited, so that the sessions the workers drain still get answers. A child that
exits on its own stops the rest (exit status 1) rather than leaving a degraded gateway.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as mp_wait
from multiprocessing.process import BaseProcess

from gateway.config import Config, load_config
from gateway.errors import ConfigError
from gateway.logsetup import configure_logging, get_logger

from ._metrics_peers import PeerSet
from ._process import hangup_stops

__all__ = ["BATCHER_START_TIMEOUT", "run_workers"]

log = get_logger("cm-gateway.serve")

# How long the batcher process may take to listen before the parent gives up.
BATCHER_START_TIMEOUT = 60.0
SOCKET_NAME = "batcher.sock"
# sun_path holds 108 octets on Linux, its NUL included; a longer path cannot be bound.
_SUN_PATH_MAX = 107


def _worker_main(
    config_path: str | None,
    index: int,
    batcher_socket: str | None,
    peers: PeerSet,
    parent: int,
    *,
    ready: Connection,
) -> None:
    """One worker process (spawned): the same config, the shared port (SO_REUSEPORT);
    says "ready" on ``ready`` once it listens."""
    import structlog

    from ._eventloop import run_loop
    from ._process import register_secrets
    from ._service import serve

    config = load_config(config_path)
    configure_logging(config.log.level, config.log.format)
    register_secrets(config)
    structlog.contextvars.bind_contextvars(worker=index)

    def listening(_address: str) -> None:
        # The parent prints the banner once every worker has said this.
        ready.send_bytes(b"ready")
        ready.close()

    try:
        status = run_loop(
            serve(
                config,
                announce=listening,
                reuse_port=True,
                batcher_socket=batcher_socket,
                peers=peers,
                parent=parent,
            ),
            config.smtp.event_loop,
        )
    except ConfigError as exc:
        print(f"cm-gateway: worker {index}: {exc}", file=sys.stderr)
        status = 2
    sys.exit(status)


def _check_once(config: Config) -> None:
    """Fail here, once, with exit 2, rather than in every worker."""
    if (where := config.port_zero_listener()) is not None:
        raise ConfigError("workers > 1 needs a fixed port (not 0)", where=where)
    if not hasattr(socket, "SO_REUSEPORT"):  # pragma: no cover - Windows
        raise ConfigError("workers > 1 needs SO_REUSEPORT (Linux, BSD)", where="smtp.workers")
    from gateway.smtp import build_tls_context, load_users

    if config.smtp.tls_cert_file:
        build_tls_context(
            config.smtp.tls_cert_file,
            config.smtp.tls_key_file,
            min_version=config.smtp.tls_min_version,
            ciphers=config.smtp.tls_ciphers,
        )
    if config.smtp.auth_users_file:
        load_users(config.smtp.auth_users_file)


@dataclass(frozen=True, slots=True)
class _Workers:
    count: int
    why: str
    rundir: str
    announce: Callable[[str], None] | None


class _StoppedWhileStarting(Exception):
    """SIGTERM or SIGINT before the workers started."""


def _stop_starting(_signum: int, _frame: object) -> None:
    # Once: a second signal must not interrupt the clean-up that this one starts.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise _StoppedWhileStarting


def _start_batcher(
    ctx: multiprocessing.context.SpawnContext, config_path: str | None, path: str
) -> BaseProcess | int:
    """The batcher process, listening at ``path``; or the exit status it failed with."""
    from ._batcher_process import batcher_main

    # A pipe rather than an Event: no POSIX semaphore, so nothing needed in /dev/shm.
    ready, tell_ready = ctx.Pipe(duplex=False)
    proc = ctx.Process(
        target=batcher_main, args=(config_path, path, tell_ready), name="cm-gateway-batcher"
    )
    try:
        proc.start()
        tell_ready.close()
        # Readable: either "ready", or the end of the pipe when the process died first.
        if ready.poll(BATCHER_START_TIMEOUT):
            ready.recv_bytes()
            return proc
        log.error("batcher_start_timeout", seconds=BATCHER_START_TIMEOUT)
        proc.terminate()
        proc.join()
        return 1
    except EOFError:
        proc.join()
        log.error("batcher_exited", exitcode=proc.exitcode)
        return 2 if proc.exitcode == 2 else 1
    except _StoppedWhileStarting:
        if proc.pid is not None:
            proc.terminate()
            proc.join()
        raise
    finally:
        tell_ready.close()
        ready.close()


def run_workers(
    config: Config,
    config_path: str | None,
    count: int,
    *,
    why: str = "smtp.workers",
    announce: Callable[[str], None] | None = None,
) -> int:
    """Run ``count`` workers (and the batcher) until a signal stops them; the exit
    status. ``why``: how the count was chosen (logged); ``announce(address)`` is called
    after the banner line."""
    _check_once(config)
    ctx = multiprocessing.get_context("spawn")
    # The private directory holds the batcher's socket and the workers' metrics sockets.
    rundir = _private_dir(count)
    try:
        batcher: BaseProcess | None = None
        shared = config.classifier.shared_batcher
        socket_path = os.path.join(rundir, SOCKET_NAME) if shared else None
        # Reload signals ignored from here, and inherited so by the children until they
        # listen (their default action is to terminate).
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        try:
            if socket_path is not None:
                # A stop asked for while the batcher starts (up to BATCHER_START_TIMEOUT)
                # ends it and the private directory too, not the parent alone; until
                # _supervise installs its own handlers, before any worker starts.
                signal.signal(signal.SIGTERM, _stop_starting)
                signal.signal(signal.SIGINT, _stop_starting)
                log.info("batcher_starting")
                started = _start_batcher(ctx, config_path, socket_path)
                if isinstance(started, int):
                    return started
                batcher = started
            workers = _Workers(count, why, rundir, announce)
            return _supervise(ctx, config, config_path, workers, socket_path, batcher)
        except _StoppedWhileStarting:
            if batcher is not None:
                batcher.terminate()
                batcher.join()
            log.info("stopped_while_starting")
            return 0
    finally:
        shutil.rmtree(rundir, ignore_errors=True)


def _heard_ready(starting: list[Connection]) -> bool:
    """Take the workers that said "ready" (or hung up, dying) out of ``starting``; True
    when any was heard."""
    heard = mp_wait(starting, timeout=0)
    for ready in heard:
        assert isinstance(ready, Connection)
        with contextlib.suppress(EOFError):  # died first: the loop sees its exit code
            ready.recv_bytes()
        ready.close()
        starting.remove(ready)
    return bool(heard)


def _announce(config: Config, workers: _Workers, shared_batcher: bool) -> None:
    """Every worker listens: say so (log, banner, and the caller's ``announce``)."""
    listening = config.smtp.listen or config.milter.listen
    log.info(
        "workers_started",
        workers=workers.count,
        why=workers.why,
        listen=listening,
        shared_batcher=shared_batcher,
    )
    print(f"cm-gateway listening on {listening} ({workers.count} workers)", flush=True)
    if workers.announce is not None:
        workers.announce(listening)


def _private_dir(workers: int) -> str:
    """A directory only this user may enter (the batcher spends the API token), in
    $TMPDIR; in /tmp when $TMPDIR is too deep for the sockets' paths to be bound."""
    rundir = tempfile.mkdtemp(prefix="cm-gateway-")
    paths = (os.path.join(rundir, SOCKET_NAME), PeerSet(rundir, 0, workers).path(workers - 1))
    if max(len(os.fsencode(path)) for path in paths) <= _SUN_PATH_MAX:
        return rundir
    os.rmdir(rundir)
    log.info("batcher_socket_in_tmp", tmpdir=tempfile.gettempdir())
    return tempfile.mkdtemp(prefix="cm-gateway-", dir="/tmp")


def _supervise(
    ctx: multiprocessing.context.SpawnContext,
    config: Config,
    config_path: str | None,
    workers: _Workers,
    socket_path: str | None,
    batcher: BaseProcess | None,
) -> int:
    count = workers.count
    # Each worker says "ready" on its pipe once it listens; the banner waits for all.
    pipes = [ctx.Pipe(duplex=False) for _ in range(count)]
    procs = [
        ctx.Process(
            target=_worker_main,
            args=(config_path, i, socket_path, PeerSet(workers.rundir, i, count), os.getpid()),
            kwargs={"ready": pipes[i][1]},
            name=f"cm-gateway-worker-{i}",
        )
        for i in range(count)
    ]
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for proc in procs:
            if proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for proc in procs:
        proc.start()
    for _, tell_ready in pipes:
        tell_ready.close()  # the worker's end: only the worker holds it now
    starting = [ready for ready, _ in pipes]

    def forward_reload(signum: int, _frame: object) -> None:
        for proc in procs:
            if not stopping and proc.pid is not None and proc.is_alive():
                os.kill(proc.pid, signum)

    # Set after the start: the workers inherit SIG_IGN (not a handler) until they listen.
    signal.signal(signal.SIGUSR1, forward_reload)
    if hangup_stops():  # the terminal went away: stop, as the workers do
        signal.signal(signal.SIGHUP, lambda _s, f: forward(signal.SIGTERM, f))
    else:
        signal.signal(signal.SIGHUP, forward_reload)
    status = 0
    announced = False
    while procs:
        heard = bool(starting) and _heard_ready(starting)
        # When each worker has said "ready" or died: the banner, unless one died.
        if heard and not starting and not stopping and all(p.exitcode is None for p in procs):
            _announce(config, workers, batcher is not None)
            announced = True
        if batcher is not None and batcher.exitcode is not None and not stopping:
            log.error("batcher_exited", exitcode=batcher.exitcode)
            status = 1
            forward(signal.SIGTERM, None)
        for proc in list(procs):
            proc.join(timeout=0.5 / len(procs))
            if proc.exitcode is None:
                continue
            procs.remove(proc)
            # A worker still starting up when we forward SIGTERM dies of it before its
            # handler is installed: it held no session, so that is a clean stop too.
            clean = (0, -signal.SIGTERM, -signal.SIGINT) if stopping else (0,)
            if proc.exitcode not in clean:
                # A config error found by a worker as it started (exit 2) is the
                # gateway's exit status too: the same as with one process.
                status = 2 if proc.exitcode == 2 and not announced else max(status, 1)
            if not stopping:
                # A worker died on its own: stop the rest rather than run degraded.
                log.error("worker_exited", worker=proc.name, exitcode=proc.exitcode)
                forward(signal.SIGTERM, None)
    for ready in starting:
        ready.close()
    if batcher is not None:
        if batcher.exitcode is None:
            batcher.terminate()  # SIGTERM: it answers what is under way, then exits
        batcher.join()
        if batcher.exitcode not in (0, -signal.SIGTERM) and status == 0:
            status = 1
    return status
