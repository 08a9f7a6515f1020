"""The one exception tree of cm-gateway.

Every error the gateway raises on purpose sits below ``GatewayError``, and its branch
says what happens: a ``ConfigError`` stops a command with exit status 2 (file and line);
a ``ClassifierError`` is handled as ``[classifier] on_error`` says (deliver the message
unclassified, or answer ``451 4.4.3`` so that the sending MTA retries). Replies to mail
decided on purpose (rule reject/defer, next-hop failures) are values, not exceptions (see
``replies``). Anything that escapes a session is answered ``451 4.3.0``, never a 5xx.

    GatewayError
    ├── ConfigError                  bad config or rule file: file, line/key; CLI exit 2
    │   └── RuleFileError
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

__all__ = [
    "AuthError",
    "CircuitOpenError",
    "ClassifierError",
    "ClassifierRequestError",
    "ClassifierTimeout",
    "ClassifierUnavailable",
    "ConfigError",
    "GatewayError",
    "InvalidRequestError",
    "MalformedResponseError",
    "NotFoundError",
    "RateLimitedError",
    "RuleFileError",
    "ServerError",
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
