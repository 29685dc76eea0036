"""The interactive API docs (``/docs``: Swagger UI, ``/redoc``: ReDoc) and the favicon, served from
this server alone, so that they load where no CDN can be reached.

FastAPI's own pages load Swagger UI and ReDoc from a CDN (and ReDoc its fonts from Google): a
server on a LAN, offline or behind a strict proxy shows a blank page. The assets come instead
from the ``fastapi-offline`` package (Swagger UI 5, which reads the OpenAPI 3.1 schema FastAPI
writes, and ReDoc), mounted under ``/static/docs``; the app is created with ``docs_url=None`` and
``redoc_url=None``. Swagger UI's online validator badge is turned off: it fetches from outside.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

log = logging.getLogger("service.api.docs")

ASSETS_URL = "/static/docs"
FAVICON = Path(str(resources.files("service.api") / "static" / "favicon.ico"))


def add_docs(app: FastAPI) -> None:
    """``/docs``, ``/docs/oauth2-redirect``, ``/redoc``, ``/favicon.ico`` and the assets they load."""

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(FAVICON, media_type="image/x-icon")

    try:
        import fastapi_offline
    except ImportError:  # the `service` extra is not installed in full: no docs pages, said once
        log.warning("docs_disabled reason=fastapi-offline_not_installed")
        return
    app.mount(ASSETS_URL, StaticFiles(directory=Path(fastapi_offline.__file__).parent / "static"), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.ico",
            oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
            swagger_ui_parameters={"validatorUrl": None})

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(openapi_url=f"{root}{app.openapi_url}", title=f"{app.title} - API",
                              redoc_js_url=f"{root}{ASSETS_URL}/redoc.standalone.js",
                              redoc_favicon_url=f"{root}/favicon.ico", with_google_fonts=False)
