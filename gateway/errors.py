"""The one exception tree of cm-gateway.

Every error the gateway raises on purpose sits below ``GatewayError``. For mail, the
branch says what the SMTP client hears: a ``Defer`` becomes a 4xx (the sending MTA keeps
the message and retries), a ``Reject`` becomes a 5xx (the sender gets a bounce). Anything
outside this tree that escapes a session is answered ``451 4.3.0`` (see ``replies``).

    GatewayError
    ├── ConfigError                  bad config or rule file: file, line/key; CLI exit 2
    │   └── RuleFileError
    ├── SmtpOutcome                  carries the SMTP reply to send
    │   ├── Defer                    4xx: try again later
    │   └── Reject                   5xx: refused for good
    └── ClassifierError              the model could not answer (routes by on_error)
        ├── ClassifierRequestError   the API said no to this request: never retried
        │   ├── AuthError            401 / 403
        │   ├── NotFoundError        404: project, dataset or model version unknown
        │   └── InvalidRequestError  400 / 422
        ├── ClassifierUnavailable    worth retrying
        │   ├── RateLimitedError     429 (``retry_after`` seconds, if the server said)
        │   ├── ServerError          5xx
        │   ├── TransportError       connection refused / reset / protocol error
        │   └── ClassifierTimeout    the overall deadline passed
        ├── MalformedResponseError   2xx whose body is not what the API promises
        └── CircuitOpenError         not called: the circuit breaker is open (cool-down)
"""

from __future__ import annotations

from gateway.replies import Reply

__all__ = [
    "AuthError",
    "CircuitOpenError",
    "ClassifierError",
    "ClassifierRequestError",
    "ClassifierTimeout",
    "ClassifierUnavailable",
    "ConfigError",
    "Defer",
    "GatewayError",
    "InvalidRequestError",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitedError",
    "Reject",
    "RuleFileError",
    "ServerError",
    "SmtpOutcome",
    "TransportError",
    "error_for_kind",
]


class GatewayError(Exception):
    """Base of every error cm-gateway raises on purpose."""


class ConfigError(GatewayError):
    """A config value or file is wrong. ``str()`` names the file and the key or line."""

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        where: str | None = None,
        line: int | None = None,
    ):
        self.file = file
        self.where = where
        self.line = line  # in ``file``, when ``where`` is a key and its line is known
        self.message = message
        prefix = ":".join(p for p in (file, str(line) if line else None, where) if p)
        super().__init__(f"{prefix}: {message}" if prefix else message)


class RuleFileError(ConfigError):
    """A rule file does not validate; ``where`` is ``line:column``."""


class SmtpOutcome(GatewayError):
    """An outcome of a mail transaction that carries the exact reply for the client."""

    def __init__(self, reply: Reply):
        self.reply = reply
        super().__init__(str(reply))


class Defer(SmtpOutcome):
    """Temporary failure: the client must keep the message and retry (4xx)."""

    def __init__(self, reply: Reply):
        if not 400 <= reply.code < 500:
            raise ValueError(f"Defer needs a 4xx reply, got {reply.code}")
        super().__init__(reply)


class Reject(SmtpOutcome):
    """Permanent refusal (5xx)."""

    def __init__(self, reply: Reply):
        if not 500 <= reply.code < 600:
            raise ValueError(f"Reject needs a 5xx reply, got {reply.code}")
        super().__init__(reply)


class ClassifierError(GatewayError):
    """The classifier gave no usable answer. ``kind`` goes into ``X-CM-Status: reason=``."""

    kind = "error"

    def __init__(self, message: str, *, status: int | None = None):
        self.status = status
        super().__init__(message)


class ClassifierRequestError(ClassifierError):
    """The API refused this request; sending it again cannot help."""

    kind = "refused"


class AuthError(ClassifierRequestError):
    kind = "auth"


class NotFoundError(ClassifierRequestError):
    kind = "not-found"


class InvalidRequestError(ClassifierRequestError):
    kind = "invalid-request"


class ClassifierUnavailable(ClassifierError):
    """A transient failure: retried with backoff until the deadline."""

    kind = "unavailable"


class RateLimitedError(ClassifierUnavailable):
    kind = "rate-limited"

    def __init__(self, message: str, *, status: int | None = 429, retry_after: float | None = None):
        self.retry_after = retry_after
        super().__init__(message, status=status)


class ServerError(ClassifierUnavailable):
    kind = "server-error"


class TransportError(ClassifierUnavailable):
    kind = "transport"


class ClassifierTimeout(ClassifierUnavailable):
    kind = "timeout"


class CircuitOpenError(ClassifierError):
    """Failed at once, without a call: the classifier failed repeatedly (``circuit``)."""

    kind = "circuit-open"


class MalformedResponseError(ClassifierError):
    kind = "malformed-response"


def _subclasses(cls: type[ClassifierError]) -> list[type[ClassifierError]]:
    found = [cls]
    for sub in cls.__subclasses__():
        found.extend(_subclasses(sub))
    return found


def error_for_kind(kind: str, message: str, *, status: int | None = None) -> ClassifierError:
    """The ``ClassifierError`` whose ``kind`` is ``kind`` (a plain ``ClassifierError`` for
    one this tree does not know): how an error crosses a process boundary by name."""
    for cls in _subclasses(ClassifierError):
        if cls.kind == kind:
            return cls(message, status=status)
    return ClassifierError(message, status=status)
