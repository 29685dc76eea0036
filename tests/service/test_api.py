"""The HTTP API on a real server: sessions, models, auth, errors, health and metrics."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.service.conftest import TEST_LABELS, TEST_MODEL, TEST_WEIGHTS, run_server

pytestmark = pytest.mark.service


def test_create_session_returns_what_a_client_needs(server):
    response = httpx.post(f"{server.http}/sessions", json={})
    assert response.status_code == 201, response.text
    body = response.json()
    assert set(body) == {"session_id", "token", "model", "weights", "frame_rate", "input_size", "labels_url",
                         "frames_url", "webrtc_url", "ice_servers", "expires_at"}
    assert (body["model"], body["weights"], body["frame_rate"], body["input_size"]) == (TEST_MODEL, TEST_WEIGHTS, 5.0, 64)
    assert body["frames_url"] == f"{server.ws}/sessions/{body['session_id']}/stream"
    assert body["labels_url"] == f"{server.ws}/sessions/{body['session_id']}/labels"
    assert body["webrtc_url"] == f"{server.http}/sessions/{body['session_id']}/webrtc"
    assert body["ice_servers"] == []  # no outside STUN server by default
    # Until its first frame a session lives unused_session_timeout_s (30 s), then the idle timeout (60 s).
    assert body["expires_at"] == pytest.approx(time.time() + 30, abs=5)


def test_session_options_are_validated_and_kept(server):
    body = {"top_k": 3, "min_score": 0.1, "smoothing": 0.5, "window": {"policy": "windowed", "frames": 8},
            "backpressure": {"policy": "newest_only", "max_backlog": 4}, "idle_timeout_s": 30,
            "source": {"type": "websocket", "input": "images"}}
    session = server.create(**body)
    status = httpx.get(f"{server.http}/sessions/{session['session_id']}",
                       headers={"Authorization": f"Bearer {session['token']}"}).json()
    assert status["options"]["window"] == {"policy": "windowed", "frames": 8}
    assert status["options"]["backpressure"] == {"policy": "newest_only", "max_backlog": 4}
    assert status["options"]["top_k"] == 3 and status["options"]["source"]["input"] == "images"
    assert status["state"] == "idle" and status["frames_received"] == 0 and status["last_result"] is None


@pytest.mark.parametrize("body, status, code", [
    ({"top_k": 0}, 422, "invalid_request"),
    ({"smoothing": 1.0}, 422, "invalid_request"),
    ({"surprise": 1}, 422, "invalid_request"),
    ({"source": {"type": "rtsp"}}, 422, "invalid_request"),
    ({"window": {"policy": "sliding"}}, 422, "invalid_request"),
    ({"model": "movinet_z9_stream"}, 404, "unknown_model"),
    ({"model": "movinet_test_base"}, 422, "model_not_streamable"),
    ({"model": "movinet_a5_stream"}, 422, "no_weights"),
    ({"model": TEST_MODEL, "weights": "nope"}, 422, "no_weights"),
])
def test_bad_create_requests_get_json_errors(server, body, status, code):
    response = httpx.post(f"{server.http}/sessions", json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code and error["message"]


def test_session_routes_need_the_token(server):
    session = server.create()
    url = f"{server.http}/sessions/{session['session_id']}"
    assert httpx.get(url).json()["error"]["code"] == "token_missing"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, params={"token": "wrong"}).status_code == 403
    assert httpx.delete(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert httpx.get(url, params={"token": session["token"]}).status_code == 200
    assert httpx.get(f"{server.http}/sessions/s_nope", params={"token": "x"}).json()["error"]["code"] == "session_not_found"
    assert httpx.delete(url, params={"token": session["token"]}).status_code == 204
    assert httpx.get(url, params={"token": session["token"]}).status_code == 404
    assert httpx.delete(url, params={"token": session["token"]}).status_code == 404


def test_sessions_list_is_paged(plumbing_weights):
    with run_server(max_sessions=5) as server:
        created = [server.create()["session_id"] for _ in range(5)]
        first = httpx.get(f"{server.http}/sessions", params={"limit": 2}).json()
        second = httpx.get(f"{server.http}/sessions", params={"limit": 2, "cursor": first["next_cursor"]}).json()
        third = httpx.get(f"{server.http}/sessions", params={"limit": 2, "cursor": second["next_cursor"]}).json()
        assert first["total"] == 5
        listed = [s["session_id"] for page in (first, second, third) for s in page["sessions"]]
        assert listed == created and third["next_cursor"] is None
        assert httpx.get(f"{server.http}/sessions", params={"cursor": "zz"}).json()["error"]["code"] == "bad_cursor"
        response = httpx.post(f"{server.http}/sessions", json={})
        assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_sessions"


def test_api_keys_guard_session_creation(plumbing_weights):
    with run_server(api_keys="key-one, key-two") as server:
        url = f"{server.http}/sessions"
        assert httpx.post(url, json={}).json()["error"]["code"] == "api_key_missing"
        assert httpx.post(url, json={}, headers={"X-API-Key": "nope"}).status_code == 403
        assert httpx.get(url).status_code == 401
        created = httpx.post(url, json={}, headers={"Authorization": "Bearer key-two"})
        assert created.status_code == 201
        session_id = created.json()["session_id"]
        # An API key also opens a session's routes (an operator's view).
        assert httpx.get(f"{url}/{session_id}", headers={"X-API-Key": "key-one"}).status_code == 200
        assert httpx.get(url, headers={"X-API-Key": "key-one"}).json()["total"] == 1


def test_models_are_listed_with_their_labels(server):
    models = {m["name"]: m for m in httpx.get(f"{server.http}/models").json()["models"]}
    entry = models[TEST_MODEL]
    assert entry["weights"] == [TEST_WEIGHTS] and entry["default"] and entry["loaded"]
    assert (entry["input_size"], entry["frame_rate"], entry["num_classes"]) == (64, 5.0, len(TEST_LABELS))
    # the shipped defaults run the one-frame graph as a trace in fp32, checked against the model at load
    assert entry["runtime"] == {"backend": "graph-trace", "precision": "fp32", "compiling": False, "compiled_batch_sizes": []}
    assert server.loaded().step.checks[0].passed
    assert all(name.endswith("_stream") for name in models)
    labels = httpx.get(f"{server.http}/models/{TEST_MODEL}/labels").json()
    assert labels["labels"] == TEST_LABELS


def test_health_ready_metrics_and_openapi(server):
    assert httpx.get(f"{server.http}/healthz").json() == {"status": "ok"}
    ready = httpx.get(f"{server.http}/readyz").json()
    assert ready["status"] == "ready" and f"{TEST_MODEL}:{TEST_WEIGHTS}" in ready["models"]
    metrics = httpx.get(f"{server.http}/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    for name, kind in [("movinet_sessions_active", "gauge"), ("movinet_frames_received_total", "counter"),
                       ("movinet_frames_processed_total", "counter"), ("movinet_frames_dropped_total", "counter"),
                       ("movinet_inference_duration_seconds", "histogram"), ("movinet_batch_size", "histogram"),
                       ("movinet_queue_wait_seconds", "histogram"), ("movinet_frame_latency_seconds", "histogram"),
                       ("movinet_queue_lag_seconds", "gauge"), ("movinet_backlog_frames", "gauge"), ("movinet_unclaimed_sessions", "gauge")]:
        assert f"# TYPE {name} {kind}" in metrics.text, name
    schema = httpx.get(f"{server.http}/openapi.json").json()
    assert {"/sessions", "/sessions/{session_id}", "/models", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert httpx.get(f"{server.http}/nope").json()["error"]["code"] == "not_found"


def test_readyz_says_why_it_is_not_ready(plumbing_weights):
    with run_server(wait_ready=False, model=TEST_MODEL, weights="missing") as server:
        deadline = time.monotonic() + 10
        while True:
            response = httpx.get(f"{server.http}/readyz")
            reasons = response.json().get("reasons", [])
            if any(r.startswith("model_loading_failed") for r in reasons) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert response.status_code == 503
        assert any("missing" in r for r in reasons), reasons
        assert httpx.get(f"{server.http}/healthz").status_code == 200
