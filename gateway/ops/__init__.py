"""How ``cm-gateway serve`` runs: the service in steps, workers, the shared batcher
process, the metrics and health endpoints, and rule reload.

    await serve(config)                          # one process: start, wait, drain
    run_workers(config, path)                    # [smtp] workers > 1
"""

from __future__ import annotations

from ._eventloop import run_loop
from ._process import register_secrets, shutdown_grace
from ._service import Service, serve, start_metrics
from ._supervisor import run_workers

__all__ = [
    "Service",
    "register_secrets",
    "run_loop",
    "run_workers",
    "serve",
    "shutdown_grace",
    "start_metrics",
]
