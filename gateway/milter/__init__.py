"""The milter front: the Sendmail milter protocol (v6) for Postfix and Sendmail.

``MilterServer(listen, decider, ...)`` listens (``host:port`` or ``unix:/path``); each MTA
connection is one ``MilterSession``: it collects the envelope, headers and body of each
message, hands an ``InboundMessage`` to the pipeline's ``decide`` at end of message, and
answers with the decision as milter edits (insert/change header, add/delete recipient,
quarantine, reply code, discard). The MTA keeps the queue; nothing is delivered here.
"""

from __future__ import annotations

from ._server import MilterServer

__all__ = ["MilterServer"]
