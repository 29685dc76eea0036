"""The FastAPI application: :func:`create_app` wires everything in the lifespan, onto ``app.state``.

Nothing here does I/O at import time; ``create_app`` only declares routes. The lifespan builds
the store, the model registry (and loads the default model in the background), the inference
loop and the session service, and on shutdown closes every socket (1012) before stopping them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api import routes, sockets
from service.api.bodies import document_bodies, validation_message
from service.api.docs import add_docs
from service.api.limits import BodyLimit
from service.errors import ApiError, public_reason
from service.logs import kv
from service.metrics import Metrics
from service.registry import ModelRegistry, resolve_device
from service.sessions import SessionService
from service.settings import Settings
from service.sources.budget import lower_priority
from service.store import STORE_ERRORS, create_store
from service.worker.loop import InferenceLoop

log = logging.getLogger("service.api.app")

DESCRIPTION = """Live action recognition on video streams with MoViNet stream models.

1. `POST /sessions` → `session_id`, `token`, `frames_url`, `labels_url`.
2. Open `frames_url?token=TOKEN` (WebSocket). Send frames as **binary** messages: one JPEG/PNG/WebP
   image per message (optionally preceded by `{"type": "frame", "pts": seconds}`), or the chunks of
   one WebM / fragmented-or-faststart MP4 / raw H.264 stream. Control messages are JSON text:
   `frame`, `start`, `eos`, `ping`.
3. The server answers each model frame with
   `{"type": "result", "seq", "pts", "frame_index", "labels": [{"id", "name", "score"}], "lag_ms", "dropped"}`;
   bad input gets `{"type": "error", "code", "message"}` and the session goes on.
4. `labels_url?token=TOKEN` streams the same results to other clients (dashboards);
   `?after_seq=N` on either socket replays retained results after `N`.
5. `DELETE /sessions/{id}` when done (or let it expire when idle).

WebSocket close codes: 1000 normal (after `eos`), 1009 message over the transport cap,
1011 internal error, 1012 server shutting down, 4400 bad query, 4401 missing token,
4403 wrong token, 4404 unknown session, 4409 another client already streams into the session,
4410 session deleted or expired, 4429 too many labels sockets.
HTTP errors are `{"error": {"code", "message"}}`. Full protocol: `docs/service-api.md`.
"""


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


ROLES = ("serve", "gateway", "worker")


def create_app(settings: Settings | None = None, role: str = "serve") -> FastAPI:
    """The app of one role: ``serve`` (gateway + worker in one process: the embedded default, or
    with Redis), ``gateway`` (the API; needs Redis) or ``worker`` (health/metrics routes only)."""
    settings = settings or Settings()
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    if role != "serve" and not settings.redis_url:
        raise ValueError(f"the {role} role shares its state through Redis: set MOVINET_REDIS_URL")
    if settings.redis_url:
        from service.store.redis_url import parse_redis_url

        parse_redis_url(settings.redis_url)  # a bad URL: one clear line (no password in it) before anything starts
    device = resolve_device(settings.device)  # a GPU that is not there: a clear error before anything starts

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        import torch

        torch.set_num_threads(settings.torch_threads or max(1, (os.cpu_count() or 2) - 1))
        if role in ("serve", "worker") and device.type == "cpu":
            from model.optimize import retain_freed_memory

            retain_freed_memory()  # a forward's large feature maps reuse freed memory, not fresh pages
        state = app.state
        state.settings = settings
        state.loop = asyncio.get_running_loop()
        state.draining = False
        state.model_error = None
        state.metrics = metrics = Metrics()
        state.role = role
        state.store = store = create_store(settings.redis_url, settings.results_cap,
                                           **({"socket_timeout": settings.redis_socket_timeout_s,
                                               "frame_codec": settings.frame_codec,
                                               "frame_quality": settings.frame_quality}
                                              if settings.redis_url else {}))
        state.registry = registry = ModelRegistry(settings.model, settings.weights, settings.allow_random_weights,
                                                 device=settings.device, backend=settings.backend,
                                                 weights_dir=settings.weights_dir, torch_path=settings.torch_path,
                                                 precision=settings.precision, compile=settings.compile)
        state.inference = inference = None
        if role in ("serve", "worker"):
            state.inference = inference = InferenceLoop(settings, store, registry, metrics)
            if settings.preload:  # claim once the default model is warm (or its load failed)
                inference.can_claim = lambda: bool(registry.loaded) or state.model_error is not None
        state.sessions = sessions = None
        if role in ("serve", "gateway"):
            state.sessions = sessions = SessionService(settings, store, registry, metrics, inference)
        state.image_pool = image_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode",
                                                           initializer=lower_priority, initargs=(settings.decode_nice,))
        if inference is not None:
            inference.start()
        if sessions is not None:
            sessions.start()
        preload = asyncio.create_task(_preload(app)) if settings.preload else None
        log.info(kv("started", role=role, store=store.kind, model=settings.model,
                    worker=inference.worker_id if inference else None, torch_threads=torch.get_num_threads()))
        try:
            yield
        finally:
            state.draining = True
            if preload is not None:
                preload.cancel()
            if sessions is not None:
                await sessions.drain()
                await sessions.stop()
            if inference is not None:
                if store.kind == "redis":
                    released = await inference.drain(settings.drain_timeout_s)
                    log.info(kv("worker_drained", worker=inference.worker_id, released=released))
                await inference.stop()
            image_pool.shutdown(wait=False, cancel_futures=True)
            await store.close()
            log.info(kv("stopped", role=role))

    app = FastAPI(title="MoViNet live action recognition", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan, docs_url=None, redoc_url=None)  # add_docs: served from here, no CDN
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes,
                       max_offer_body_bytes=settings.max_offer_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.headers)

    async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.warning(kv("store_unavailable", path=request.url.path, error=repr(exc)))
        return _error(503, "store_unavailable", "the state store is unreachable; retry in a moment",
                      {"Retry-After": "2"})

    for error_type in STORE_ERRORS:
        app.add_exception_handler(error_type, _store_unavailable)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, "invalid_request", validation_message(exc.errors()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail))

    app.include_router(routes.ops)
    add_docs(app)
    if role == "worker":
        return app
    app.include_router(routes.sessions)
    app.include_router(routes.models)
    app.include_router(sockets.router)
    document_bodies(app)

    static = Path(str(resources.files("service.api") / "static"))
    if (static / "index.html").is_file():
        @app.get("/", include_in_schema=False)
        async def index() -> FileResponse:
            return FileResponse(static / "index.html")

    return app


async def _preload(app: FastAPI) -> None:
    settings: Settings = app.state.settings
    try:
        loaded = await app.state.registry.load(settings.model, settings.weights)
        app.state.metrics.model_loaded(loaded.name)
    except Exception as exc:
        app.state.model_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {public_reason(exc)}"
        log.error(kv("preload_failed", model=settings.model, weights=settings.weights, error=app.state.model_error))
