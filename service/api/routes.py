"""HTTP routes. Thin: parse, call one function of :class:`SessionService`, return a schema.

``POST /sessions/{id}/webrtc`` is here too: it answers an SDP offer with a
:class:`~service.sources.webrtc.WebRtcPeer` that the session service attaches as the producer.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.api.bodies import CreateBody, OfferBody, request_body
from service.api.schemas import (
    ErrorResponse,
    EventList,
    ModelEntry,
    ModelLabels,
    ModelList,
    SessionCreate,
    SessionCreated,
    SessionPage,
    SessionStatus,
)
from service.errors import ApiError, public_reason
from service.logs import kv
from service.registry import ModelRegistry
from service.sessions import SessionService
from service.settings import Settings
from service.sources.webrtc import RtcAnswer, RtcOffer

log = logging.getLogger("service.api.routes")


def _service(request: Request) -> SessionService:
    return request.app.state.sessions


def _bearer(authorization: Annotated[str | None, Header()] = None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


def _api_key(bearer: Annotated[str | None, Depends(_bearer)],
             x_api_key: Annotated[str | None, Header()] = None) -> str | None:
    return x_api_key or bearer


def _require_api_key(service: Annotated[SessionService, Depends(_service)],
                     key: Annotated[str | None, Depends(_api_key)]) -> None:
    service.check_api_key(key)


Service = Annotated[SessionService, Depends(_service)]
Bearer = Annotated[str | None, Depends(_bearer)]
ApiKey = Annotated[str | None, Depends(_api_key)]
TokenQuery = Annotated[str | None, Query(alias="token", description="Session token (instead of the header).")]

ERRORS = {code: {"model": ErrorResponse} for code in (401, 403, 404, 413, 415, 422, 429, 503)}

sessions = APIRouter(tags=["sessions"], responses=ERRORS)
models = APIRouter(tags=["models"], responses=ERRORS)
ops = APIRouter(tags=["operations"])


def _base_url(request: Request, settings: Settings) -> str:
    base = (settings.public_url or str(request.base_url)).rstrip("/")
    return "ws" + base[4:] if base.startswith("http") else base


@sessions.post("/sessions", status_code=201, response_model=SessionCreated,
               dependencies=[Depends(_require_api_key)], openapi_extra=request_body(SessionCreate, required=False),
               summary="Create a session",
               description="Creates a session and returns its secret token. Then open `frames_url` "
               "(WebSocket) with the token (`Authorization: Bearer`) to send frames and get labels. No body: "
               "every option takes its default. The body is JSON (`Content-Type: application/json`), one "
               "object without duplicate keys; numbers are strict (`true` is not 1).")
async def create_session(body: CreateBody, request: Request, service: Service,
                         api_key: ApiKey) -> SessionCreated:
    client = "key:" + hashlib.sha256(api_key.encode()).hexdigest()[:16] if api_key else (
        "addr:" + (request.client.host if request.client else "?"))
    record, token, loaded = await service.create(body, client=client)
    base = _base_url(request, service.settings)
    return SessionCreated(
        session_id=record.session_id, token=token, model=loaded.name, weights=loaded.weights,
        frame_rate=loaded.frame_rate, input_size=loaded.input_size,
        frames_url=f"{base}/sessions/{record.session_id}/stream",
        labels_url=f"{base}/sessions/{record.session_id}/labels",
        expires_at=record.expires_at,
        webrtc_url=f"{(service.settings.public_url or str(request.base_url)).rstrip('/')}"
                   f"/sessions/{record.session_id}/webrtc",
        ice_servers=service.settings.webrtc_ice_servers,
    )


def loopback(host: str | None) -> bool:
    """127.0.0.0/8, ::1 (or ``localhost``); not 0.0.0.0, ::, a LAN address or another name."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]").split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _require_listing_allowed(request: Request, service: Annotated[SessionService, Depends(_service)]) -> None:
    """The list shows every session's options and last labels. With API keys it needs one (checked
    before this); without, only a server bound to loopback answers it, and only over loopback."""
    if service.settings.api_keys:
        return
    server = request.scope.get("server")
    if not (loopback(service.settings.host) and server and loopback(server[0])):
        raise ApiError(403, "listing_disabled", "GET /sessions shows every session; without API keys only a "
                       "server bound to 127.0.0.1 or ::1 answers it. Set MOVINET_API_KEYS to list sessions "
                       "here (then send a key)")


@sessions.get("/sessions", response_model=SessionPage,
              dependencies=[Depends(_require_api_key), Depends(_require_listing_allowed)],
              summary="List sessions (paged, oldest first)",
              description="Needs an API key when `MOVINET_API_KEYS` is set; without keys, answered only by a "
              "server bound to loopback (127.0.0.1, ::1), else 403 `listing_disabled`.")
async def list_sessions(service: Service, cursor: str | None = None,
                        limit: Annotated[int, Query(ge=1, le=200)] = 50) -> SessionPage:
    try:
        records, next_cursor = await service.store.sessions.list(cursor, limit)
    except ValueError:
        raise ApiError(400, "bad_cursor", "the cursor is not one this server returned") from None
    return SessionPage(sessions=[await service.status(r) for r in records], next_cursor=next_cursor,
                       total=await service.store.sessions.count())


@sessions.get("/sessions/{session_id}", response_model=SessionStatus, summary="A session's status",
              description="Needs the session's token (`Authorization: Bearer` or `?token=`) or an API key.")
async def get_session(session_id: str, service: Service, bearer: Bearer, api_key: ApiKey,
                      token: TokenQuery = None) -> SessionStatus:
    record = await service.get(session_id)
    service.check_token(record, token or bearer, api_key)
    return await service.status(record)


@sessions.get("/sessions/{session_id}/events", response_model=EventList, summary="A session's action events",
              description="The latest action segments (start, update, end) made from the labels, oldest first; "
              "the same `event` messages go out on the session's sockets. Needs the token or an API key.")
async def session_events(session_id: str, service: Service, bearer: Bearer, api_key: ApiKey,
                         token: TokenQuery = None, limit: Annotated[int, Query(ge=1, le=500)] = 500) -> EventList:
    record = await service.get(session_id)
    service.check_token(record, token or bearer, api_key)
    return EventList(events=await service.store.results.events(session_id, limit))


@sessions.delete("/sessions/{session_id}", status_code=204, summary="Close a session",
                 description="Closes its sockets (code 4410) and forgets its state and results.")
async def delete_session(session_id: str, service: Service, bearer: Bearer, api_key: ApiKey,
                         token: TokenQuery = None) -> Response:
    record = await service.get(session_id)
    service.check_token(record, token or bearer, api_key)
    await service.delete(session_id, reason="deleted")
    return Response(status_code=204)


@models.get("/models", response_model=ModelList, summary="Models that sessions can use")
async def list_models(request: Request) -> ModelList:
    registry: ModelRegistry = request.app.state.registry
    return ModelList(models=[ModelEntry(**entry) for entry in registry.catalog()])


@models.get("/models/{name}/labels", response_model=ModelLabels, summary="A model's class names, by id")
async def model_labels(name: str, request: Request, weights: str | None = None) -> ModelLabels:
    registry: ModelRegistry = request.app.state.registry
    loaded = await registry.load(name, weights)
    return ModelLabels(name=loaded.name, weights=loaded.weights, labels=loaded.labels)


@ops.get("/healthz", summary="Liveness: the process and its inference loop run")
async def healthz(request: Request) -> JSONResponse:
    inference = request.app.state.inference
    alive = inference is None or inference.alive  # a gateway has no inference loop
    return JSONResponse({"status": "ok" if alive else "inference_loop_dead"}, status_code=200 if alive else 503)


@ops.get("/readyz", summary="Readiness: model loaded and warm, store reachable, not draining")
async def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    reasons = []
    if state.draining:
        reasons.append("draining")
    if state.inference is not None and not state.inference.alive:
        reasons.append("inference_loop_dead")
    if state.settings.preload and not state.registry.loaded:
        reasons.append(f"model_loading_failed: {state.model_error}" if state.model_error else "model_loading")
    if not await state.store.ping():
        reasons.append("store_unreachable")
    elif state.sessions is not None and (saturated := await state.sessions.admission.saturated()):
        reasons.append(f"saturated: {saturated}")
    if reasons:
        return JSONResponse({"status": "not_ready", "reasons": reasons}, status_code=503)
    return JSONResponse({"status": "ready", "models": [m.key for m in state.registry.loaded],
                         "sessions": await state.store.sessions.count()})


@ops.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


# What aiortc's SDP parser lets out of Python itself (int("0\x00"), a KeyError of an unknown value,
# a short line unpacked): no message for a client.
_PYTHON_TEXT = re.compile(r"invalid literal for|could not convert|values to unpack|index out of range")


def offer_reason(exc: BaseException) -> str:
    """Why an offer was refused, for the client: aiortc's own ValueErrors say what is wrong with the
    SDP; Python's own errors from parsing it say nothing a client can use."""
    if type(exc) is ValueError and not _PYTHON_TEXT.search(str(exc)):
        return public_reason(exc)
    return "it could not be answered"


@sessions.post("/sessions/{session_id}/webrtc", response_model=RtcAnswer, summary="Stream a session over WebRTC",
               openapi_extra=request_body(RtcOffer, required=True),
               description="Takes an SDP offer with a video track (and a data channel labelled `labels` for the "
               "results) and returns the answer. Needs the session's token or an API key. One frame producer "
               "per session: 409 while a `/stream` socket, a camera or another peer feeds it.")
async def offer(session_id: str, body: OfferBody, request: Request, service: Service, bearer: Bearer,
                api_key: ApiKey, token: TokenQuery = None) -> RtcAnswer:
    record = await service.get(session_id)
    service.check_token(record, token or bearer, api_key)
    if service.draining:
        raise ApiError(503, "draining", "the server is shutting down")
    loaded = await service.registry.load(record.model, record.weights)
    peer = await service.open_webrtc(record, loaded, request.app.state.image_pool)
    try:
        answer = await peer.answer(body)
    except ApiError:
        await peer.close(reason="bad_offer")
        raise
    except Exception as exc:  # aiortc refuses SDP with ValueError and friends
        log.info(kv("webrtc_offer_refused", session_id=session_id, error=type(exc).__name__))
        await peer.close(reason="bad_offer")
        raise ApiError(422, "bad_offer", f"cannot answer this offer: {offer_reason(exc)}") from None
    log.info(kv("webrtc_answered", session_id=session_id))
    return RtcAnswer(sdp=answer.sdp, type="answer")
