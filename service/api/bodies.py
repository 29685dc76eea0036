"""JSON request bodies, read strictly, and the one format of validation messages.

FastAPI's own body parsing takes the last of duplicate keys, parses any content type as JSON,
answers a missing body with ``body: Field required`` and junk with ``JSON decode error``; here a
body is read once, by :func:`json_object`:

* no body (or only whitespace): ``{}``, so every field takes its default;
* a body needs ``Content-Type: application/json`` (or ``application/*+json``): else 415;
* it must be UTF-8 JSON, one object, no duplicate key, no ``NaN``/``Infinity``, no number that
  overflows a float, nested at most :data:`MAX_JSON_DEPTH` deep: else 422 with what is wrong.

The size is bounded before this (:class:`service.api.limits.BodyLimit`). Nothing a client sent
is quoted back longer than :data:`SHOWN` characters.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect

from service.api.schemas import SessionCreate
from service.errors import ApiError, shown
from service.sources.webrtc import RtcOffer

MAX_JSON_DEPTH = 32
SHOWN = 40
MAX_PROBLEMS = 5

Model = TypeVar("Model", bound=BaseModel)


def strict_loads(text: str, what: str = "the body") -> Any:
    """``json.loads`` that refuses what JSON parsers disagree on; ValueError says why, about ``what``."""
    depth = 0
    for ch in text:  # a cheap guard before the recursive parser (brackets in strings count too)
        if ch in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"{what} is nested more than {MAX_JSON_DEPTH} deep")
        elif ch in "]}":
            depth -= 1

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"{what} has the key {shown(key, SHOWN)} twice")
            seen.add(key)
        return dict(pairs)

    def no_constant(name: str) -> Any:
        raise ValueError(f"{what} has {name}, which is not JSON")

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):
            raise ValueError(f"{what} has a number too large for a float")
        return value

    try:
        return json.loads(text, object_pairs_hook=no_duplicates, parse_constant=no_constant, parse_float=finite)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
    except RecursionError:
        raise ValueError(f"{what} is nested too deeply") from None
    except ValueError as exc:
        if str(exc).startswith(what):
            raise
        if "digits" in str(exc):  # int() refuses thousands of digits (sys.set_int_max_str_digits)
            raise ValueError(f"{what} has a number with too many digits") from None
        raise ValueError(f"{what} is not valid JSON") from None


def _json_media_type(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


async def json_object(request: Request) -> dict[str, Any]:
    """The request's JSON object body (``{}`` when there is none), or an :class:`ApiError`.

    The body must arrive within ``http_head_timeout_s``, as the head must (a body sent a byte at a
    time held its connection forever): else 408. A client gone mid-body gets nothing (400, which no
    one reads) and leaves no traceback in the log."""
    timeout = request.app.state.settings.http_head_timeout_s
    try:
        body = await asyncio.wait_for(request.body(), timeout)
    except TimeoutError:
        raise ApiError(408, "request_timeout", f"the request body did not arrive within {timeout:g} s",
                       headers={"Connection": "close"}) from None
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client went away before its body arrived") from None
    if not body.strip():
        return {}
    content_type = request.headers.get("content-type", "")
    if not _json_media_type(content_type):
        got = f" (got {shown(content_type.split(';', 1)[0].strip(), SHOWN)})" if content_type.strip() else ""
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as JSON with Content-Type: application/json{got}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, "invalid_request", f"the body is not valid JSON: it is not UTF-8 (byte {exc.start})") \
            from None
    try:
        data = strict_loads(text.removeprefix("\ufeff"))
    except ValueError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_request", "the body must be a JSON object")
    return data


def validate(model: type[Model], data: dict[str, Any], context: dict[str, Any] | None = None) -> Model:
    """``model`` from ``data``; a refusal is the same 422 ``invalid_request`` as FastAPI's own."""
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None


def validation_message(errors: Sequence[dict[str, Any]]) -> str:
    """``body.top_k: Input should be a valid integer; ...``: the first few problems, clipped."""
    def part(p: Any) -> str:
        text = str(p)
        return text if len(text) <= SHOWN else text[:SHOWN] + "…"

    problems = [f"{'.'.join(part(p) for p in e['loc'])}: {str(e['msg'])[:200]}" for e in errors[:MAX_PROBLEMS]]
    if len(errors) > MAX_PROBLEMS:
        problems.append(f"and {len(errors) - MAX_PROBLEMS} more")
    return "; ".join(problems)


async def session_create(request: Request) -> SessionCreate:
    settings = request.app.state.settings
    return validate(SessionCreate, await json_object(request),
                    context={"max_idle_timeout_s": settings.max_idle_timeout_s})


async def rtc_offer(request: Request) -> RtcOffer:
    return validate(RtcOffer, await json_object(request))


CreateBody = Annotated[SessionCreate, Depends(session_create)]
OfferBody = Annotated[RtcOffer, Depends(rtc_offer)]


def request_body(model: type[BaseModel], required: bool) -> dict[str, Any]:
    """``openapi_extra`` of a route whose body is read here: the schema FastAPI cannot see."""
    return {"requestBody": {"required": required, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{model.__name__}"}}}}}


def document_bodies(app: FastAPI) -> None:
    """Put the body models (and the models they use) into the app's OpenAPI components."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (SessionCreate, RtcOffer):
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[model.__name__] = definition
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
