"""The emulator over real HTTP (aiohttp): the Communications Mining prediction routes,
plus ``/_emulator/*`` to read the billing ledger and change faults at run time.

    POST /api/v1/datasets/{project}/{dataset}/labellers/{version}/predict-raw-emails
    POST .../predict            POST .../predict-comments          GET .../validation
    GET  /_emulator/stats       POST /_emulator/faults              POST /_emulator/reset

Every ``/api/`` call: ``Authorization: Bearer`` (401), then a fault draw, then the
route (unknown route or version -> 404, bad body -> 400/422, see ``_validate``). The
answer leaves no sooner than the configured latency after the call arrived (the emulator's
own work counts, as a remote API's would). Error bodies are ``{"status": "error",
"message": ...}`` (but the deliberate HTML 502 fault); successes carry ``"status": "ok"``.
``/_emulator/*`` needs no token: it is a test tool, bind it to loopback."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from gateway.logsetup import get_logger

from ._faults import FaultInjector, malformed_body
from ._inputs import comment_key, comments_for, predict_docs, raw_email_docs
from ._ledger import Ledger, text_digest
from ._model import KeywordModel, Selection
from ._replies import count_documents, error_response, fault_response
from ._validate import (
    DATASET_RE,
    PROJECT_RE,
    RequestInvalid,
    validate_predict,
    validate_predict_comments,
    validate_predict_raw_emails,
)

__all__ = [
    "API_ROUTES",
    "CLIENT_MAX_SIZE",
    "EmulatorServer",
    "EmulatorState",
    "make_app",
    "start_server",
]

API_ROUTES = ("predict-raw-emails", "predict", "predict-comments", "validation")
BILLED_ROUTES = ("predict-raw-emails", "predict")
CLIENT_MAX_SIZE = 64 * 1024 * 1024  # above it: 413 with the error body
_PREFIX = "/api/v1/datasets/{project}/{dataset}/labellers/{version}/"
_log = get_logger("cm-gateway.emulator")


@dataclass
class EmulatorState:
    """Everything one emulator instance holds: the model, the token, faults, the ledger.

    ``token`` None accepts any non-empty Bearer token."""

    model: KeywordModel
    token: str | None = None
    faults: FaultInjector = field(default_factory=FaultInjector)
    ledger: Ledger = field(default_factory=Ledger)
    access_log: bool = False
    closing: asyncio.Event = field(default_factory=asyncio.Event)


STATE: web.AppKey[EmulatorState] = web.AppKey("emulator_state", EmulatorState)
# Per request: the answer (for "malformed" faults), the bill, the document count (for logs).
PAYLOAD: web.RequestKey[dict[str, Any]] = web.RequestKey("emulator_payload", dict)
BILLING: web.RequestKey[tuple[int, list[str], list[str] | None]] = web.RequestKey(
    "emulator_billing", tuple
)
DOCUMENTS: web.RequestKey[int] = web.RequestKey("emulator_documents", int)


class _ApiError(Exception):
    def __init__(self, status: int, message: str):
        self.status = status
        self.message = message
        super().__init__(message)


def _ok(request: web.Request, payload: dict[str, Any]) -> web.Response:
    request[PAYLOAD] = payload
    return web.json_response(payload)


async def _json_body(request: web.Request) -> Any:
    raw = await request.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestInvalid(400, "body: not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_no_constant)
    except ValueError as exc:
        raise RequestInvalid(400, f"body: malformed JSON ({exc})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _version(request: web.Request, *, allow_latest: bool = False) -> int:
    """Check project/dataset patterns and resolve the version, else 404."""
    info = request.match_info
    if not PROJECT_RE.match(info["project"]):
        raise _ApiError(404, f"project {info['project']!r} not found (invalid name)")
    if not DATASET_RE.match(info["dataset"]):
        raise _ApiError(404, f"dataset {info['dataset']!r} not found (invalid name)")
    state = request.app[STATE]
    version = state.model.resolve_version(info["version"], allow_latest=allow_latest)
    if version is None:
        raise _ApiError(404, f"model version {info['version']!r} not found")
    return version


async def predict_raw_emails(request: web.Request) -> web.Response:
    version = _version(request)
    body = await _json_body(request)
    state = request.app[STATE]
    validate_predict_raw_emails(body, known_labels=state.model.label_names)
    docs = raw_email_docs(body)
    request[DOCUMENTS] = len(docs)
    payload = state.model.predict_texts(
        docs, version=version, selection=Selection.from_request(body)
    )
    if body.get("include_comments"):
        payload["comments"] = comments_for(body)
    keys = [comment_key(d) for d in body["documents"]]
    digests = [text_digest(part.text for part in doc.parts) for doc in docs]
    request[BILLING] = (len(docs), keys, digests)
    return _ok(request, payload)


async def predict(request: web.Request) -> web.Response:
    version = _version(request)
    body = await _json_body(request)
    state = request.app[STATE]
    validate_predict(body, known_labels=state.model.label_names)
    docs = predict_docs(body)
    request[DOCUMENTS] = len(docs)
    payload = state.model.predict_texts(
        docs, version=version, selection=Selection.from_request(body)
    )
    request[BILLING] = (len(docs), [], None)
    return _ok(request, payload)


async def predict_comments(request: web.Request) -> web.Response:
    version = _version(request)
    body = await _json_body(request)
    state = request.app[STATE]
    validate_predict_comments(body, known_labels=state.model.label_names)
    request[DOCUMENTS] = len(body["uids"])
    payload = state.model.predict_uids(
        body["uids"], version=version, selection=Selection.from_request(body)
    )
    return _ok(request, payload)


async def validation(request: web.Request) -> web.Response:
    version = _version(request, allow_latest=True)
    return _ok(request, request.app[STATE].model.validation(version))


# -- /_emulator ------------------------------------------------------------------------


async def stats(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", **request.app[STATE].ledger.to_json()})


async def faults(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if request.method == "POST":
        body = await _json_body(request)
        if not isinstance(body, dict):
            raise RequestInvalid(400, "body: expected an object")
        try:
            state.faults.update(body)
        except ValueError as exc:
            raise RequestInvalid(400, str(exc)) from None
    return web.json_response({"status": "ok", "faults": state.faults.settings.to_json()})


async def reset(request: web.Request) -> web.Response:
    request.app[STATE].ledger.reset()
    return web.json_response({"status": "ok"})


# -- the pipeline every call goes through --------------------------------------------


def _authorised(state: EmulatorState, header: str | None) -> bool:
    scheme, _, token = (header or "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return False
    if state.token is None:
        return True
    return hmac.compare_digest(token.encode(), state.token.encode())


def _route_name(request: web.Request) -> str:
    route = request.match_info.route
    name = getattr(route, "name", None)
    return str(name) if name else "unmatched"


async def _dispatch(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    state: EmulatorState,
    route: str,
) -> tuple[web.StreamResponse, str | None]:
    settings = state.faults.settings
    selector = request.match_info.get("version")
    resolved = state.model.resolve_version(selector) if selector is not None else None
    latency = settings.latency_for(selector, resolved) / 1000.0
    loop = asyncio.get_running_loop()
    started = loop.time()
    # The answer (an error raised as an exception too) leaves ``latency`` after the call
    # arrived, the emulator's own work included, as a remote API's would: on a shared
    # machine the model's CPU must not stretch the latency asked for. A cancelled call
    # (the client went away) does not wait.
    try:
        answer = await _answer(request, handler, state, route)
    except asyncio.CancelledError:
        raise
    except BaseException:
        await _rest_of(latency, started)
        raise
    await _rest_of(latency, started)
    return answer


async def _rest_of(latency: float, started: float) -> None:
    remaining = latency - (asyncio.get_running_loop().time() - started)
    if remaining > 0:
        await asyncio.sleep(remaining)


async def _answer(
    request: web.Request,
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    state: EmulatorState,
    route: str,
) -> tuple[web.StreamResponse, str | None]:
    if request.path.startswith("/api/") and not _authorised(
        state, request.headers.get("Authorization")
    ):
        return error_response(401, "missing or invalid API token"), None
    fault = state.faults.draw() if route in API_ROUTES else None
    if fault is not None and not fault.startswith("malformed"):
        state.ledger.fault(fault)
        if route in BILLED_ROUTES:
            state.ledger.sent(await count_documents(request))
        return await fault_response(state.faults.settings, state.closing, fault), fault
    response = await handler(request)
    if fault is not None:
        payload = request.get(PAYLOAD)
        if response.status != 200 or payload is None:
            return response, None  # nothing to corrupt: the real answer stands
        state.ledger.fault(fault)
        body = malformed_body(fault, payload)
        return web.Response(status=200, text=body, content_type="application/json"), fault
    return response, None


@web.middleware
async def _pipeline(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.perf_counter()
    route = _route_name(request)
    admin = request.path.startswith("/_emulator/")
    if not admin:
        state.ledger.request(route, request.match_info.get("version"))
    fault: str | None = None
    try:
        response, fault = await _dispatch(request, handler, state, route)
    except RequestInvalid as exc:
        response = error_response(exc.status, exc.message)
    except _ApiError as exc:
        response = error_response(exc.status, exc.message)
    except web.HTTPException as exc:
        response = error_response(exc.status, f"{exc.status} {exc.reason}", _allow(exc))
    except asyncio.CancelledError:
        raise
    except Exception:
        # A bug of the emulator must still answer in the API's error shape.
        _log.exception("emulator error", route=route)
        response = error_response(500, "internal emulator error")
    elapsed = (time.perf_counter() - started) * 1000.0
    response.headers["Server-Timing"] = f"total;dur={elapsed:.1f}"
    if not admin:
        billing = request.get(BILLING)
        if route in BILLED_ROUTES and DOCUMENTS in request:
            state.ledger.sent(request[DOCUMENTS])
        if response.status == 200 and fault is None and billing and route in BILLED_ROUTES:
            state.ledger.bill(*billing)
        state.ledger.response(response.status)
        if state.access_log:
            _log.info(
                "request",
                method=request.method,
                route=route,
                status=response.status,
                documents=request.get(DOCUMENTS, 0),
                ms=round(elapsed, 1),
                fault=fault,
            )
    return response


def _allow(exc: web.HTTPException) -> dict[str, str] | None:
    allow = exc.headers.get("Allow")
    return {"Allow": allow} if allow else None


def make_app(state: EmulatorState, *, client_max_size: int = CLIENT_MAX_SIZE) -> web.Application:
    """The aiohttp application of one emulator instance."""
    app = web.Application(middlewares=[_pipeline], client_max_size=client_max_size)
    app[STATE] = state
    app.router.add_post(
        _PREFIX + "predict-raw-emails", predict_raw_emails, name="predict-raw-emails"
    )
    app.router.add_post(_PREFIX + "predict", predict, name="predict")
    app.router.add_post(_PREFIX + "predict-comments", predict_comments, name="predict-comments")
    app.router.add_get(_PREFIX + "validation", validation, name="validation", allow_head=False)
    app.router.add_get("/_emulator/stats", stats, name="_stats")
    app.router.add_route("GET", "/_emulator/faults", faults, name="_faults_get")
    app.router.add_post("/_emulator/faults", faults, name="_faults")
    app.router.add_post("/_emulator/reset", reset, name="_reset")
    return app


@dataclass
class EmulatorServer:
    """A started emulator: ``base_url`` on the real bound port; ``await stop()``."""

    state: EmulatorState
    runner: web.AppRunner
    host: str
    port: int

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        """Release held (``timeout``) requests, then close every connection."""
        self.state.closing.set()
        await self.runner.cleanup()


async def start_server(
    state: EmulatorState,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    client_max_size: int = CLIENT_MAX_SIZE,
) -> EmulatorServer:
    """Bind and serve ``state`` on ``host:port`` (0 = any free port) in the running loop."""
    state.closing = asyncio.Event()
    runner = web.AppRunner(
        make_app(state, client_max_size=client_max_size),
        access_log=None,
        handler_cancellation=True,  # a client that gives up releases a held request
        shutdown_timeout=5.0,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0]
    return EmulatorServer(state, runner, host, int(bound[1]))
