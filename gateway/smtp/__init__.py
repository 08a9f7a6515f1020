"""The SMTP front: listener, sessions, relay policy, AUTH, XFORWARD and DATA reading.

``SmtpServer(config.smtp, processor)`` listens; each accepted transaction becomes an
``InboundMessage`` for the pipeline, and the pipeline's ``Reply`` is the answer to DATA.
"""

from __future__ import annotations

from ._auth import Authenticator, load_users
from ._server import SmtpServer, build_tls_context

__all__ = ["Authenticator", "SmtpServer", "build_tls_context", "load_users"]
