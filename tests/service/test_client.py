"""``movinet-client`` against a real server, in a subprocess like a user runs it: ``stream`` (input
checked before a session exists, ``--json``, the ``block`` policy for files, clean-up on failure),
``models``, ``sessions``, ``watch``, ``events``, and what it says when the server is not there."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.service.conftest import TEST_LABELS, TEST_MODEL, encode_video, moving_frames

pytestmark = pytest.mark.service
ROOT = Path(__file__).resolve().parents[2]


def _client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.client", "stream", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_client_streams_a_file_and_prints_labels(server, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(moving_frames(30, seed=21), fps=15, container="mp4"))
    done = _client(str(video), "--url", server.http, "--model", TEST_MODEL, "--fast", "--top-k", "2")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 10  # 2 s at 5 fps
    assert all(any(name in line for name in TEST_LABELS) for line in lines)
    assert lines[0].split()[0] == "0.00s" and lines[-1].split()[0] == "1.80s"
    assert "sent 10 frames, 10 labels, 0 dropped, 0 errors" in done.stderr


def test_client_sends_in_real_time_by_default(server, tmp_path):
    video = tmp_path / "clip.webm"
    video.write_bytes(encode_video(moving_frames(15, seed=22), fps=15, container="webm"))
    import time

    started = time.monotonic()
    done = _client(str(video), "--url", server.http, "--model", TEST_MODEL)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip().splitlines()) == 5
    assert time.monotonic() - started > 0.8  # 5 frames at 5 fps: 0.8 s of pts


def test_client_reports_a_refused_session(server, tmp_path):
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(moving_frames(5), fps=5, container="mp4"))
    done = _client(str(video), "--url", server.http, "--model", "movinet_z9_stream")
    assert done.returncode != 0 and "unknown_model" in done.stderr


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service.client", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _total(server) -> int:
    return httpx.get(server.http + "/sessions").json()["total"]


@pytest.mark.parametrize(("source", "message"), [
    ("{tmp}/nothing.mp4", "cannot open {tmp}/nothing.mp4: no such file"),
    ("{tmp}", "cannot open {tmp}: it is a directory"),
    ("README.md", "README.md is not a video PyAV can read"),
    ("pyproject.toml", "pyproject.toml is not a video PyAV can read (no video track)"),
])
def test_a_bad_source_is_refused_before_a_session_exists(server, tmp_path, source, message):
    before = _total(server)
    done = _client(source.format(tmp=tmp_path), "--url", server.http)
    assert done.returncode == 2
    assert done.stderr.strip() == f"movinet-client: {message.format(tmp=tmp_path)}"
    assert _total(server) == before


def test_an_unreachable_server_is_named(tmp_path):
    from tests.service.sources import free_port

    port = free_port()
    video = tmp_path / "clip.mp4"
    video.write_bytes(encode_video(moving_frames(5), fps=5, container="mp4"))
    for args in (["stream", str(video)], ["models"], ["sessions"], ["watch", "s_x", "--token", "t"]):
        done = _run(*args, "--url", f"http://127.0.0.1:{port}")
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.strip() == f"movinet-client: cannot reach the server at http://127.0.0.1:{port}: " \
                                      "connection refused", args


def test_json_lines_and_a_file_streamed_under_the_block_policy(server, tmp_path):
    video = tmp_path / "clip.webm"
    video.write_bytes(encode_video(moving_frames(30, seed=23), fps=15, container="webm"))
    done = _client(str(video), "--url", server.http, "--model", TEST_MODEL, "--fast", "--json", "--keep")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[-1]["type"] == "summary" and {m["type"] for m in lines[:-1]} <= {"result", "event"}
    assert [m["seq"] for m in lines if m["type"] == "result"] == list(range(1, 11))
    summary = lines[-1]
    assert (summary["labels"], summary["dropped"], summary["frames_sent"], summary["complete"]) == (10, 0, 10, True)
    session_id = summary["session_id"]
    # --keep: the session is still there, and it asked for `block` (a file: every frame labelled)
    listed = _run("sessions", "--url", server.http, "--json")
    assert listed.returncode == 0, listed.stderr
    mine = [s for s in map(json.loads, listed.stdout.splitlines()) if s["session_id"] == session_id]
    assert mine and mine[0]["options"]["backpressure"]["policy"] == "block"
    assert mine[0]["frames_processed"] == 10
    table = _run("sessions", "--url", server.http)
    assert session_id in table.stdout and "received" in table.stdout.splitlines()[0]
    assert httpx.delete(f"{server.http}/sessions/{session_id}",  # --keep gave the token
                        headers={"Authorization": f"Bearer {summary['token']}"}).status_code == 204


def test_models_lists_the_server_models(server):
    done = _run("models", "--url", server.http, "--json")
    assert done.returncode == 0, done.stderr
    models = {m["name"]: m for m in map(json.loads, done.stdout.splitlines())}
    assert TEST_MODEL in models and models[TEST_MODEL]["num_classes"] == len(TEST_LABELS)
    table = _run("models", "--url", server.http)
    assert table.returncode == 0 and any(line.startswith(TEST_MODEL) for line in table.stdout.splitlines())


def test_watch_prints_a_session_labels_until_it_is_deleted(server):
    import asyncio
    import time

    from websockets.asyncio.client import connect

    from tests.service.conftest import collect_until_close, send_images, stream_url

    session = server.create(top_k=2)

    async def stream() -> None:
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            await send_images(ws, moving_frames(6, seed=24), [i / 5 for i in range(6)])
            await ws.send(json.dumps({"type": "eos"}))
            await collect_until_close(ws)

    asyncio.run(stream())
    watcher = subprocess.Popen([sys.executable, "-m", "service.client", "watch", session["session_id"],
                                "--token", session["token"], "--after-seq", "0", "--json", "--url", server.http],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[dict] = []
    while len([m for m in lines if m["type"] == "result"]) < 6:  # the retained results, replayed
        lines.append(json.loads(watcher.stdout.readline()))
    assert [m["seq"] for m in lines if m["type"] == "result"] == list(range(1, 7))
    assert {m["type"] for m in lines} <= {"result", "event"}
    time.sleep(0.2)
    httpx.delete(f"{server.http}/sessions/{session['session_id']}",
                 headers={"Authorization": f"Bearer {session['token']}"})
    assert watcher.wait(30) == 0, watcher.stderr.read()
    rest = [json.loads(line) for line in watcher.stdout.read().splitlines()]
    assert [m.get("code") for m in rest if m["type"] == "error"] == ["session_deleted"]
    refused = _run("watch", session["session_id"], "--token", "wrong", "--url", server.http)
    assert refused.returncode == 1 and "session_not_found" in refused.stderr + refused.stdout


def test_events_prints_the_events_or_the_server_404(server):
    import asyncio

    from websockets.asyncio.client import connect

    from tests.service.conftest import collect_until_close, send_images, stream_url

    # Events at once: the first frame's top label starts a segment.
    session = server.create(top_k=1, events={"enter_score": 0.01, "enter_frames": 1})

    async def stream() -> None:
        async with connect(stream_url(server, session)) as ws:
            await ws.recv()
            await send_images(ws, moving_frames(4, seed=26), [i / 5 for i in range(4)])
            await ws.send(json.dumps({"type": "eos"}))
            await collect_until_close(ws)

    asyncio.run(stream())
    done = _run("events", session["session_id"], "--token", session["token"], "--url", server.http)
    if "/sessions/{session_id}/events" in httpx.get(server.http + "/openapi.json").json()["paths"]:
        assert done.returncode == 0, done.stderr
        first = done.stdout.splitlines()[0]
        assert first.startswith("event start ") and "0.00s" in first and "score " in first, done.stdout
        assert any(name in first for name in TEST_LABELS)
        as_json = _run("events", session["session_id"], "--token", session["token"], "--url", server.http, "--json")
        events = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert events and events[0]["type"] == "event" and events[0]["phase"] == "start"
        assert len(events) == len(done.stdout.splitlines())
        missing = _run("events", "s_nope", "--token", "t", "--url", server.http)
        assert missing.returncode == 1 and "404 session_not_found" in missing.stderr
    else:  # the route is not on this server yet: say so, with the server's answer
        assert done.returncode == 1
        assert done.stderr.strip() == (f"movinet-client: GET /sessions/{session['session_id']}/events: 404 "
                                       "not_found: Not Found (this server has no events route: it is older "
                                       "than this client)")


def test_an_interrupted_stream_deletes_its_session_even_with_keep(server, tmp_path):
    import re
    import signal

    video = tmp_path / "long.webm"
    video.write_bytes(encode_video(moving_frames(150, seed=25), fps=15, container="webm"))  # 10 s, real time
    client = subprocess.Popen([sys.executable, "-m", "service.client", "stream", str(video), "--url", server.http,
                               "--model", TEST_MODEL, "--keep"], cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert client.stdout.readline()  # a first label
    client.send_signal(signal.SIGINT)
    assert client.wait(30) == 130
    session_id = re.search(r"session (s_\S+)", client.stderr.read()).group(1)
    assert httpx.get(f"{server.http}/sessions/{session_id}", headers={"Authorization": "Bearer x"}).status_code == 404


def test_every_option_says_its_default():
    done = _run("stream", "--help")
    assert done.returncode == 0
    text = " ".join(done.stdout.split())
    for option in ("--url", "--top-k", "--show", "--min-score", "--smoothing", "--backpressure", "--max-frames"):
        assert option in text
    assert "(default: http://127.0.0.1:8000)" in text and "(default: 3)" in text and "(default: auto)" in text
    for command in ("models", "sessions", "watch", "events"):
        assert _run(command, "--help").returncode == 0
