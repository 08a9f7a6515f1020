"""How ``cm-gateway serve`` runs: the service in steps, workers, the shared batcher
process, the metrics and health endpoints, and rule reload.

    await serve(config)                          # one process: start, wait, drain
    run_workers(config, path)                    # [smtp] workers > 1
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._eventloop import run_loop
from ._process import register_secrets, shutdown_grace
from ._supervisor import run_workers

if TYPE_CHECKING:
    from ._service import Service, serve, start_metrics

_SERVICE = frozenset({"Service", "serve", "start_metrics"})

__all__ = [
    "Service",
    "register_secrets",
    "run_loop",
    "run_workers",
    "serve",
    "shutdown_grace",
    "start_metrics",
]


def __getattr__(name: str) -> Any:
    # The service imports both fronts, the pipeline and every wing below; the shared
    # batcher process, spawned from ops/_batcher_process.py, needs none of them, and a
    # face that imported them eagerly cost it ~17 MB and ~0.3 s at start. Loaded on first use.
    if name in _SERVICE:
        from . import _service

        return getattr(_service, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
