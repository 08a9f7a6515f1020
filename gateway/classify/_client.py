"""The Communications Mining API client (and the custom provider, which speaks the same
``predict-raw-emails`` shape at a URL of the user's choosing).

One ``httpx.AsyncClient`` per client with an explicit pool, an ``asyncio.Semaphore`` of the
same size in front of it (httpcore's pool turns CPU-bound when it queues, see
libraries.md §4), and one deadline per call that covers queueing, every attempt and every
backoff (``_retry``). HTTP answers map onto ``errors.py`` in ``_http``; bodies become typed
results in ``_responses``.

The token travels only in the ``Authorization`` header. It is registered with
``redact.register_secret`` so that no log line can carry it, and no exception built here
contains it.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from gateway.config import ClassifierConfig
from gateway.documents import MAX_DOCUMENTS, RawEmailDocument
from gateway.errors import ClassifierError, ClassifierRequestError, ConfigError, InvalidRequestError
from gateway.logsetup import get_logger
from gateway.predictions import CommentPrediction, PredictionBatch, ValidationSummary, split_label
from gateway.redact import register_secret

from ._http import error_from_response, error_from_transport, json_object
from ._request_json import json_body
from ._responses import parse_comment_predictions, parse_prediction_batch, parse_validation
from ._retry import RetryPolicy, call_with_retries

__all__ = [
    "CommunicationsMiningClient",
    "CustomEndpoint",
    "Endpoint",
    "TenantEndpoint",
    "label_thresholds",
]

log = get_logger("cm-gateway.classify._client")

ModelVersion = int | str
Threshold = float | Literal["auto"]

PREDICT_RAW_EMAILS = "predict-raw-emails"


class Endpoint(ABC):
    """Where the routes live and how to authenticate: the one difference between the
    Communications Mining tenant and a custom provider."""

    kind: ClassVar[str]

    @abstractmethod
    def url(self, route: str, version: ModelVersion) -> str:
        """The URL of ``route`` for model ``version``."""

    @abstractmethod
    def auth_headers(self) -> dict[str, str]:
        """The headers carrying the credential (empty when there is none)."""

    @property
    @abstractmethod
    def description(self) -> str:
        """One line for logs; never the credential."""


@dataclass(frozen=True, slots=True)
class TenantEndpoint(Endpoint):
    """``{base_url}/api/v1/datasets/{project}/{dataset}/labellers/{version}/{route}``."""

    base_url: str
    project: str
    dataset: str
    token: str = field(repr=False)
    kind: ClassVar[str] = "communications-mining"

    def url(self, route: str, version: ModelVersion) -> str:
        parts = (self.project, self.dataset, str(version))
        project, dataset, ver = (quote(p, safe="") for p in parts)
        return (
            f"{self.base_url.rstrip('/')}/api/v1/datasets/{project}/{dataset}"
            f"/labellers/{ver}/{route}"
        )

    def auth_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def description(self) -> str:
        return f"communications-mining {self.project}/{self.dataset}"


@dataclass(frozen=True, slots=True)
class CustomEndpoint(Endpoint):
    """The user's own model: one URL answering the ``predict-raw-emails`` shape. The
    secret goes in ``header``: as ``Bearer <secret>`` for ``Authorization``, raw otherwise."""

    endpoint_url: str
    header: str = "Authorization"
    secret: str | None = field(default=None, repr=False)
    kind: ClassVar[str] = "custom"

    def url(self, route: str, version: ModelVersion) -> str:
        if route != PREDICT_RAW_EMAILS:
            raise ClassifierRequestError(f"the custom provider serves only {PREDICT_RAW_EMAILS}")
        return self.endpoint_url

    def auth_headers(self) -> dict[str, str]:
        if not self.secret:
            return {}
        if self.header.lower() == "authorization":
            return {self.header: f"Bearer {self.secret}"}
        return {self.header: self.secret}

    @property
    def description(self) -> str:
        # Query strings may carry keys: never print them.
        parts = urlsplit(self.endpoint_url)
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return f"custom {urlunsplit((parts.scheme, host, parts.path, '', ''))}"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Building a verifying context loads the CA bundle (tens of ms, seconds on a busy
    # box); every client of the process can share one.
    return httpx.create_ssl_context()


def label_thresholds(
    labels: Sequence[tuple[str, float | None]],
) -> list[dict[str, Any]]:
    """Config's ``[{name = "A > B", threshold = 0.6}]`` as the API's
    ``[{"name": ["A", "B"], "threshold": 0.6}]`` (threshold omitted when unset)."""
    result: list[dict[str, Any]] = []
    for name, threshold in labels:
        item: dict[str, Any] = {"name": list(split_label(name))}
        if threshold is not None:
            item["threshold"] = threshold
        result.append(item)
    return result


class CommunicationsMiningClient:
    """Async client of the prediction routes. Implements ``context.Classifier``.

    ``timeout`` is the whole budget of one call, retries included. Use one instance per
    process and ``await aclose()`` at the end.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        *,
        model_version: ModelVersion = "live",
        transform_tag: str = "generic.0.CONVKER5",
        threshold: Threshold = 0.25,
        labels: Sequence[tuple[str, float | None]] = (),
        timeout: float = 10.0,
        max_in_flight: int = 4,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_retry: Callable[[ClassifierError], None] | None = None,
    ) -> None:
        if max_in_flight < 1 or timeout <= 0:
            raise ValueError("max_in_flight >= 1 and timeout > 0")
        self.endpoint = endpoint
        self.model_version = model_version
        self.transform_tag = transform_tag
        self.threshold = threshold
        self.labels = label_thresholds(labels)
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        # Called before each retry (cm_gateway_api_retries_total).
        self.on_retry = on_retry
        for value in endpoint.auth_headers().values():
            register_secret(value.removeprefix("Bearer "))
        self._semaphore = asyncio.Semaphore(max_in_flight)
        # The per-socket timeouts only catch a stalled connection early enough to retry;
        # the real bound is the call's deadline. Redirects are not followed: the token
        # must not be replayed to another host.
        self._http = httpx.AsyncClient(
            headers={**endpoint.auth_headers(), "Accept": "application/json"},
            timeout=httpx.Timeout(
                connect=min(connect_timeout, timeout), read=timeout, write=timeout, pool=timeout
            ),
            limits=httpx.Limits(
                max_connections=max_in_flight, max_keepalive_connections=max_in_flight
            ),
            follow_redirects=False,
            verify=_tls_context(),
            transport=transport,
        )

    @classmethod
    def from_config(
        cls,
        config: ClassifierConfig,
        *,
        env: Mapping[str, str] | None = None,
        model_version: ModelVersion | None = None,
        retry: RetryPolicy | None = None,
        on_retry: Callable[[ClassifierError], None] | None = None,
    ) -> CommunicationsMiningClient:
        """The client for ``provider = communications-mining`` or ``custom``.

        Raises ``ConfigError`` naming the key when the token or secret is missing."""
        endpoint: Endpoint
        if config.provider == "communications-mining":
            token = config.token(env)
            if not token:
                raise ConfigError(
                    f"the API token is missing: set the environment variable {config.token_env}",
                    where="classifier.token_env",
                )
            endpoint = TenantEndpoint(config.base_url, config.project, config.dataset, token)
        elif config.provider == "custom":
            secret = config.secret(env)
            if config.secret_env and not secret:
                raise ConfigError(
                    f"the custom provider's secret is missing: set the environment variable"
                    f" {config.secret_env}",
                    where="classifier.secret_env",
                )
            endpoint = CustomEndpoint(config.url, config.secret_header, secret)
        else:
            raise ConfigError(
                f"provider {config.provider!r} is not served over HTTP", where="classifier.provider"
            )
        return cls(
            endpoint,
            model_version=config.model_version if model_version is None else model_version,
            transform_tag=config.transform_tag,
            threshold=config.threshold,
            labels=[(lt.name, lt.threshold) for lt in config.labels],
            timeout=config.timeout,
            max_in_flight=config.max_in_flight,
            retry=retry,
            on_retry=on_retry,
        )

    @property
    def description(self) -> str:
        """e.g. ``communications-mining acme/inbox@live``."""
        if isinstance(self.endpoint, TenantEndpoint):
            return f"{self.endpoint.description}@{self.model_version}"
        return self.endpoint.description

    def _selection(self) -> dict[str, Any]:
        body: dict[str, Any] = {"threshold": self.threshold}
        if self.labels:
            body["labels"] = self.labels
        return body

    def raw_emails_request(
        self, documents: Sequence[RawEmailDocument], *, include_comments: bool = False
    ) -> dict[str, Any]:
        """The JSON body of ``predict-raw-emails`` for ``documents``."""
        body: dict[str, Any] = {
            "documents": list(documents),
            "transform_tag": self.transform_tag,
            **self._selection(),
        }
        if include_comments:
            body["include_comments"] = True
        return body

    async def predict_raw_emails(
        self, documents: Sequence[RawEmailDocument], *, include_comments: bool = False
    ) -> PredictionBatch:
        """One prediction per raw email, in order. Raises ``ClassifierError``."""
        if not documents:
            return PredictionBatch(predictions=())
        _check_count(len(documents))
        body = self.raw_emails_request(documents, include_comments=include_comments)
        answer = await self._call("POST", PREDICT_RAW_EMAILS, body, documents=len(documents))
        return parse_prediction_batch(answer, len(documents))

    async def predict(self, documents: Sequence[Mapping[str, Any]]) -> PredictionBatch:
        """``predict``: documents in the comments format (``messages``, ``user_properties``)."""
        if not documents:
            return PredictionBatch(predictions=())
        _check_count(len(documents))
        body = {"documents": list(documents), **self._selection()}
        answer = await self._call("POST", "predict", body, documents=len(documents))
        return parse_prediction_batch(answer, len(documents))

    async def predict_comments(self, uids: Sequence[str]) -> list[CommentPrediction]:
        """``predict-comments``: predictions for comments already in the platform, by
        ``source_id.comment_id``."""
        if not uids:
            return []
        _check_count(len(uids))
        body = {"uids": list(uids), **self._selection()}
        answer = await self._call("POST", "predict-comments", body, documents=len(uids))
        return parse_comment_predictions(answer)

    async def validation(self, version: ModelVersion | None = None) -> ValidationSummary:
        """The model's validation statistics and label taxonomy (``latest`` allowed)."""
        answer = await self._call("GET", "validation", None, version=version)
        return parse_validation(answer)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def _call(
        self,
        method: str,
        route: str,
        body: dict[str, Any] | None,
        *,
        version: ModelVersion | None = None,
        documents: int = 0,
    ) -> dict[str, Any]:
        url = self.endpoint.url(route, self.model_version if version is None else version)
        # Encoded once for every attempt, not once per retry.
        content = None if body is None else json_body(body)

        async def once() -> dict[str, Any]:
            async with self._semaphore:
                started = time.perf_counter()
                try:
                    if content is None:
                        response = await self._http.request(method, url, json=body)
                    else:
                        response = await self._http.request(
                            method, url, content=content, headers=_JSON_CONTENT
                        )
                except httpx.HTTPError as exc:
                    error = error_from_transport(exc)
                    # Debug: a retry logs it (classifier.retry_scheduled, with the URL),
                    # and the last one is the message's reason.
                    log.debug("classifier.transport_error", route=route, error=str(error))
                    raise error from None
                except ValueError as exc:  # NaN or inf in a document: httpx refuses it
                    raise InvalidRequestError(f"request is not valid JSON: {exc}") from None
            log.debug(
                "classifier.response",
                route=route,
                status=response.status_code,
                documents=documents,
                ms=round((time.perf_counter() - started) * 1000, 1),
            )
            if not response.is_success:
                raise error_from_response(response)
            return json_object(response)

        return await call_with_retries(
            once, policy=self.retry, budget=self.timeout, on_retry=self.on_retry, url=url
        )


_JSON_CONTENT = {"Content-Type": "application/json"}


def _check_count(count: int) -> None:
    if count > MAX_DOCUMENTS:
        raise InvalidRequestError(
            f"{count} documents in one request; the API takes {MAX_DOCUMENTS}"
        )
