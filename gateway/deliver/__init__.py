"""Next hops: hand a message on (SMTP/SMTPS/LMTP with a connection pool, TLS and AUTH as
configured, or a Maildir).

``make_delivery(config)`` returns the ``Delivery`` the ``[downstream]`` section names;
``make_next_hops(config)`` that one and one per ``[downstream.routes.NAME]``;
``deliver(...)`` returns a ``DeliveryResult`` whose reply is already mapped to ours.
XFORWARD (the original client's attributes) is parsed and written here.
"""

from __future__ import annotations

from ._delivery import Delivery, make_delivery
from ._probe import probe_next_hop
from ._routes import DEFAULT_ROUTE, NextHops, make_next_hops
from ._xforward import EHLO_KEYWORD, XForward, XForwardError, XForwardState, from_session

__all__ = [
    "DEFAULT_ROUTE",
    "EHLO_KEYWORD",
    "Delivery",
    "NextHops",
    "XForward",
    "XForwardError",
    "XForwardState",
    "from_session",
    "make_delivery",
    "make_next_hops",
    "probe_next_hop",
]
