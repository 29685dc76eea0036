"""``/docs`` and ``/redoc`` load from this server alone (no CDN), and the favicon is there.

The browser half (Swagger UI rendered in Chromium, no request that fails or leaves the server)
is in ``test_webpage.py``.
"""

from __future__ import annotations

import re

import httpx
import pytest

pytestmark = pytest.mark.service


def local_urls(html: str) -> list[str]:
    urls = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    urls += re.findall(r"""\burl\s*:\s*["']([^"']+)["']""", html)  # SwaggerUIBundle({url: '/openapi.json'})
    return urls


@pytest.mark.parametrize(("page", "script"), [("/docs", "swagger-ui-bundle.js"), ("/redoc", "redoc.standalone.js")])
def test_the_docs_pages_reference_only_this_server(server, page, script):
    response = httpx.get(server.http + page)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    html = response.text
    assert "cdn" not in html.lower() and "fonts.googleapis" not in html
    urls = local_urls(html)
    assert urls and all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    for url in urls:
        asset = httpx.get(server.http + url)
        assert asset.status_code == 200, url
    js = next(url for url in urls if url.endswith(script))
    asset = httpx.get(server.http + js)
    assert "javascript" in asset.headers["content-type"] and len(asset.content) > 500_000


def test_the_favicon_is_served(server):
    response = httpx.get(server.http + "/favicon.ico")
    assert response.status_code == 200 and response.headers["content-type"] == "image/x-icon"
    assert response.content[:4] == b"\x00\x00\x01\x00"  # an ICO file
    assert "/favicon.ico" not in httpx.get(server.http + "/openapi.json").json()["paths"]


def test_every_model_field_is_described_and_documented(server):
    from pathlib import Path

    schema = httpx.get(server.http + "/openapi.json").json()["components"]["schemas"]["ModelEntry"]
    assert all(field.get("description") for field in schema["properties"].values()), schema
    docs = (Path(__file__).resolve().parents[2] / "docs" / "service-api.md").read_text()
    table = docs[docs.index("| `ModelEntry` field |"):]
    for name in schema["properties"]:
        assert f"| `{name}` |" in table, name
    entry = next(m for m in httpx.get(server.http + "/models").json()["models"] if m["loaded"])
    assert set(entry) <= set(schema["properties"]) and isinstance(entry["weights"], list)
