"""Next hops: hand a message on (SMTP with a connection pool, or a Maildir).

``make_delivery(config)`` returns the ``Delivery`` the ``[downstream]`` section names;
``deliver(...)`` returns a ``DeliveryResult`` whose reply is already mapped to ours.
XFORWARD (the original client's attributes) is parsed and written here.
"""

from __future__ import annotations

from ._delivery import Delivery, make_delivery
from ._xforward import EHLO_KEYWORD, XForward, XForwardError, XForwardState, from_session

__all__ = [
    "EHLO_KEYWORD",
    "Delivery",
    "XForward",
    "XForwardError",
    "XForwardState",
    "from_session",
    "make_delivery",
]
