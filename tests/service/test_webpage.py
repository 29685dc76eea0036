"""The web page in a real browser: headless Chromium (Debian's) with a fake camera playing the test video.

Chromium loops a y4m made here from the first two motions of the test video (pan left, zoom in);
the page opens the camera, creates a session, streams over WebRTC (or falls back to the
WebSocket) and shows the labels. The labels must follow the motions. Where in the loop the first
frame the server sees falls is not known, so the clip offset that fits best is used (see
``sources.score_aligned``); both motions must be named. The page also shows the model's classes
and a timeline of the last minute (top labels, or the action events once they come). A
screenshot is kept under the test's tmp dir (and copied to docs/img/webpage.png with
``MOVINET_UPDATE_SCREENSHOT=1``). ``/docs`` and the page must load from the server alone, with no
request that fails (the favicon included).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import av
import httpx
import pytest

from tests.service.conftest import run_server
from tests.service.sources import CLIP_S, MODEL, TRUTH, VIDEO, WEIGHTS, chromium_path, require, score_aligned

pytestmark = [pytest.mark.service, pytest.mark.slow]

MIN_CORRECT = 0.75
RUN_S = 2 * CLIP_S + 1  # two loops of the clip
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "img" / "webpage.png"
FLAGS = ["--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream", "--headless", "--no-sandbox",
         "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def make_y4m(path: Path, seconds: float) -> Path:
    """The first ``seconds`` of the test video as raw yuv420p y4m (what Chromium's fake camera reads)."""
    with av.open(str(VIDEO)) as source, av.open(str(path), "w", format="yuv4mpegpipe") as out:
        video = source.streams.video[0]
        stream = out.add_stream("rawvideo", rate=video.average_rate)
        stream.width, stream.height, stream.pix_fmt = video.width, video.height, "yuv420p"
        for frame in source.decode(video):
            if frame.time >= seconds:
                break
            frame.pts = None
            for packet in stream.encode(frame.reformat(format="yuv420p")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


@pytest.fixture(scope="module")
def browser_env(tmp_path_factory):
    executable = chromium_path()
    require(executable is not None, "chromium (Debian package)")
    try:
        from playwright.sync_api import sync_playwright  # noqa: F401
    except ImportError:
        require(False, "playwright (the test extra)")
    tmp = tmp_path_factory.mktemp("browser")
    return {"executable": executable, "y4m": make_y4m(tmp / "camera.y4m", CLIP_S), "tmp": tmp}


@pytest.fixture(scope="module")
def page_server(plumbing_weights):
    with run_server(model=MODEL, weights=WEIGHTS, max_backlog=64, torch_threads=0) as handle:
        yield handle


def run_page(browser_env, server, name: str, query: str = "", block_webrtc: bool = False) -> dict:
    """Open the page, press Start, let it run ``RUN_S`` seconds; what the page saw, and a screenshot."""
    from playwright.sync_api import sync_playwright

    profile = browser_env["tmp"] / f"profile-{name}"  # a fresh user-data dir per run
    shutil.rmtree(profile, ignore_errors=True)
    t0 = time.monotonic()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=browser_env["executable"], headless=True,
            args=FLAGS + [f"--use-file-for-fake-video-capture={browser_env['y4m']}"],
            viewport={"width": 1100, "height": 640})
        try:
            page = context.pages[0] if context.pages else context.new_page()
            console: list[str] = []
            page.on("console", lambda m: console.append(m.text))
            failed = watch_requests(page, server)
            if block_webrtc:  # the WebRTC offer fails: the page must fall back to the WebSocket
                page.route("**/webrtc", lambda route: route.fulfill(
                    status=503, content_type="application/json",
                    body=json.dumps({"error": {"code": "draining", "message": "blocked by the test"}})))
            page.goto(f"{server.http}/{query}")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            page.click("#start")
            page.wait_for_function("window.movinet.results.length > 0", timeout=30_000)
            started = time.monotonic()
            print(f"browser: first label {started - t0:.1f} s after launch")
            while time.monotonic() - started < RUN_S:
                page.wait_for_timeout(500)
                state = page.evaluate("window.movinet.state")
                assert state == "streaming", (state, page.evaluate("window.movinet.errors"), console[-5:])
            seen = page.evaluate("({transport: movinet.transport, results: movinet.results, errors: movinet.errors,"
                                 " session: movinet.session && movinet.session.session_id})")
            seen.update(page.evaluate("""() => ({
                classes: movinet.classes, events: movinet.events, timeline: movinet.timeline,
                chips: document.querySelectorAll('#classes span').length,
                painted: (() => { const c = document.querySelector('#timeline');
                                  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                                  let n = 0; for (let i = 3; i < d.length; i += 4) n += d[i] > 0; return n; })(),
                caption: document.querySelector('#timeline-mode').textContent })"""))
            seen["failed"] = failed
            seen["overlay"] = page.inner_text("#overlay")
            seen["labels_text"] = page.inner_text("#labels")
            seen["facts"] = page.inner_text("#facts")
            seen["screenshot"] = browser_env["tmp"] / f"{name}.png"
            page.screenshot(path=str(seen["screenshot"]))
            page.click("#stop")
            page.wait_for_function("window.movinet.state === 'idle'")
            page.wait_for_timeout(300)
        finally:
            context.close()
    return seen


def watch_requests(page, server) -> list[str]:
    """Every request that fails, answers 400 or more, or goes anywhere but the server. (Not with
    ``page.route``: while Playwright intercepts, Chromium fails every favicon load.)"""
    failed: list[str] = []
    page.on("request", lambda request: request.url.startswith((server.http, "data:", "blob:"))
            or failed.append(f"outside the server: {request.url}"))
    page.on("requestfailed", lambda request: failed.append(f"failed: {request.url} {request.failure}"))
    page.on("response", lambda response: response.status >= 400 and not response.url.endswith("/webrtc")
            and failed.append(f"{response.status}: {response.url}"))
    return failed


def check_page(seen: dict, server) -> None:
    """The classes of the model, and a painted timeline of the labels (or of the events)."""
    labels = httpx.get(f"{server.http}/models/{MODEL}/labels", params={"weights": WEIGHTS}).json()["labels"]
    assert seen["classes"] == labels and seen["chips"] == len(labels)
    timeline = seen["timeline"]
    assert timeline["segments"] and seen["painted"] > 0, timeline
    if seen["events"]:  # the server sent action events: the timeline draws them instead
        assert timeline["mode"] == "events" and "events" in seen["caption"]
        assert {s["name"] for s in timeline["segments"]} <= {e["label"] for e in seen["events"]}
    else:
        assert timeline["mode"] == "labels"
        assert {s["name"] for s in timeline["segments"]} <= {r["labels"][0]["name"] for r in seen["results"]
                                                             if r["labels"]}
    print(f"timeline: {timeline['mode']}, {len(timeline['segments'])} segments "
          f"({', '.join(s['name'] for s in timeline['segments'])}); {len(seen['events'])} events")


def check_labels(seen: dict, what: str) -> None:
    truth = json.loads(TRUTH.read_text())
    results = seen["results"]
    labelled = [(r["pts"], r["labels"][0]["name"] if r["labels"] else None) for r in results]
    accuracy, scored, offset = score_aligned(labelled, truth, period=CLIP_S)
    names = {name for _, name in labelled}
    lags = sorted(r["lag_ms"] for r in results)
    print(f"{what}: {accuracy:.0%} of {scored} labels correct at clip offset {offset:.1f} s; "
          f"{len(results)} labels over {results[-1]['pts'] - results[0]['pts']:.1f} s; "
          f"lag median {lags[len(lags) // 2]:.0f} ms, max {lags[-1]:.0f} ms")
    assert {"pan left", "zoom in"} <= names, names
    assert scored >= 20 and accuracy >= MIN_CORRECT, labelled
    assert seen["overlay"] in truth["classes"]  # the video shows the current top label
    assert "lag" in seen["facts"] and " ms" in seen["facts"]


def test_page_labels_the_webcam_over_webrtc(browser_env, page_server):
    seen = run_page(browser_env, page_server, "webrtc")
    assert seen["transport"] == "webrtc" and not seen["errors"], seen["errors"]
    check_labels(seen, "page over WebRTC")
    check_page(seen, page_server)
    assert not seen["failed"], seen["failed"]
    shutil.copy(seen["screenshot"], browser_env["tmp"] / "webpage.png")
    if os.environ.get("MOVINET_UPDATE_SCREENSHOT"):
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(seen["screenshot"], SCREENSHOT)
    # Stop deleted the session.
    assert httpx.get(f"{page_server.http}/sessions").json()["total"] == 0


def test_page_falls_back_to_the_websocket(browser_env, page_server):
    seen = run_page(browser_env, page_server, "fallback", block_webrtc=True)
    assert seen["transport"] == "websocket"
    assert any("falling back" in e for e in seen["errors"]), seen["errors"]
    check_labels(seen, "page over the WebSocket fallback")
    check_page(seen, page_server)
    assert not seen["failed"], seen["failed"]
    assert httpx.get(f"{page_server.http}/sessions").json()["total"] == 0


# Load the page's icon as an image: its width, or an error.
LOAD_FAVICON = """new Promise((resolve, reject) => { const image = new Image();
    image.onload = () => resolve(image.naturalWidth); image.onerror = () => reject(new Error("no favicon"));
    image.src = document.querySelector("link[rel~=icon]").href; })"""


def test_docs_load_from_the_server_alone(browser_env, page_server):
    """Swagger UI renders the API offline: every request goes to the server and none fails."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=browser_env["executable"], headless=True,
                                             args=FLAGS)
        try:
            page = browser.new_page()
            failed = watch_requests(page, page_server)
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto(f"{page_server.http}/docs")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            page.wait_for_selector("text=/sessions", timeout=30_000)  # the operations are listed
            title = page.inner_text(".swagger-ui .info .title")
            favicon = page.evaluate(LOAD_FAVICON)
            page.goto(f"{page_server.http}/")
            page.wait_for_function("document.querySelector('#classes').children.length > 0")
            page_favicon = page.evaluate(LOAD_FAVICON)
            page.wait_for_timeout(300)
        finally:
            browser.close()
    print(f"/docs: {len(requested)} requests, all to the server")
    assert "MoViNet live action recognition" in title
    assert favicon == page_favicon == 48  # the ICO's largest picture, decoded by the browser
    assert any(url.endswith("/static/docs/swagger-ui-bundle.js") for url in requested)
    assert not failed, failed
