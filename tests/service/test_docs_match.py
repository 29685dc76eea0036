"""The docs tell the truth: every error code the service can send and every field of every
response body (from the OpenAPI schema) is in docs/service-api.md."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCS = (REPO / "docs" / "service-api.md").read_text()

# Where codes are made: ApiError(status, "code", ...), MediaError("code", ...), SourceRefused("code", ...),
# messages.error("code", ...), report("code", ...), and the body/limit refusals.
_CODE = re.compile(r'(?:ApiError\(\s*\d{3},\s*|MediaError\(\s*|SourceRefused\(\s*|messages\.error\(\s*|'
                   r'error_body\(\s*|report\(\s*|_refuse\([^,]+,[^,]+,\s*)f?"([a-z_]+)"')


def test_every_error_code_the_service_sends_is_documented():
    codes = set()
    for path in (REPO / "service").rglob("*.py"):
        codes.update(_CODE.findall(path.read_text()))
    assert len(codes) > 20, codes  # the pattern still finds them
    missing = sorted(code for code in codes if f"`{code}`" not in DOCS)
    assert not missing, f"error codes missing from docs/service-api.md: {missing}"


def test_every_response_field_is_documented(server):
    import httpx

    schema = httpx.get(server.http + "/openapi.json").json()
    components = schema["components"]["schemas"]
    responses = set()
    for path in schema["paths"].values():
        for operation in path.values():
            for response in operation.get("responses", {}).values():
                ref = response.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref")
                if ref:
                    responses.add(ref.rsplit("/", 1)[1])

    def fields(name: str, seen: set[str]) -> set[str]:
        if name in seen:
            return set()
        seen.add(name)
        found = set()
        for field, spec in components[name].get("properties", {}).items():
            found.add(field)
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(spec).replace("'", '"')):
                found |= fields(ref, seen)
        return found

    documented = {f for name in responses for f in fields(name, set())}
    missing = sorted(f for f in documented if f"`{f}`" not in DOCS and f not in DOCS)
    assert not missing, f"response fields missing from docs/service-api.md: {missing}"
