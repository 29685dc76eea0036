"""Any model in one command: ``movinet-service fetch``, and ``serve --weights kinetics600`` fetching
what the cache lacks at startup, against a local HTTP server serving a tarball in the official
layout (``tests/model/io/test_fetch.py``'s); a weights file given as ``--weights PATH``.

Every failure is one line on stderr and exit status 1 (a download) or 2 (a setting), and leaves
no file in the cache.
"""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.cli import main
from tests.model.io.test_fetch import NAME, official_style_tarball
from tests.service.cli_server import _command, cli_server, free_port

CACHED = f"{NAME}_kinetics600.safetensors"


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the folder; a file named in ``truncate`` is cut after half its bytes, the connection
    closed, with the whole length announced (a server that goes away mid-transfer)."""

    truncate: set[str] = set()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        name = self.path.lstrip("/")
        if name not in self.truncate:
            return super().do_GET()
        data = (Path(self.directory) / name).read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.wfile.flush()
        self.close_connection = True

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def www(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Path, type[_Handler]]]:
    """A download host on a free port with the official-layout tarball of the test model; the
    cache in tmp_path/cache. Yields (base URL, served folder, handler class)."""
    folder = tmp_path / "www"
    folder.mkdir()
    handler = type("Handler", (_Handler,), {"truncate": set()})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    official_style_tarball(folder)
    monkeypatch.setenv("MOVINET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MOVINET_WEIGHTS_BASE_URL", base_url)
    monkeypatch.delenv("MOVINET_REDIS_URL", raising=False)
    yield base_url, folder, handler
    httpd.shutdown()
    httpd.server_close()


def cache_files(tmp_path: Path) -> list[str]:
    folder = tmp_path / "cache"
    return sorted(path.name for path in folder.iterdir()) if folder.is_dir() else []


def test_fetch_fills_the_cache_and_a_second_run_does_nothing(www, tmp_path, capsys):
    base_url, folder, _ = www
    assert main(["fetch", NAME, "--quiet"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(tmp_path / "cache" / CACHED)]
    assert f"fetching {NAME} (kinetics600) from {base_url}/{NAME}.tar.gz" in err
    assert cache_files(tmp_path) == [CACHED]
    (folder / f"{NAME}.tar.gz").unlink()  # a second run must not download
    assert main(["fetch", NAME]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(tmp_path / "cache" / CACHED)] and err == ""


def test_fetch_refuses_unknown_models_before_any_download(www, tmp_path, capsys):
    assert main(["fetch", NAME, "movinet_z9_stream"]) == 2
    assert capsys.readouterr().err.startswith("movinet-service fetch: no model named movinet_z9_stream;")
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("fault", ["checksum", "truncated", "not_a_tarball", "missing", "server_gone"])
def test_fetch_failures_are_one_line_exit_1_and_leave_no_file(www, tmp_path, capsys, monkeypatch, fault):
    _, folder, handler = www
    argv = ["fetch", NAME, "--quiet"]
    expected = "cannot fetch"
    if fault == "checksum":
        argv += ["--sha256", "0" * 64]
        expected = "does not match the expected"
    elif fault == "truncated":
        handler.truncate.add(f"{NAME}.tar.gz")
        expected = "could not download"
    elif fault == "not_a_tarball":
        (folder / f"{NAME}.tar.gz").write_bytes(b"not a tarball")
        expected = "is not a valid tar.gz archive"
    elif fault == "missing":
        (folder / f"{NAME}.tar.gz").unlink()
        expected = "HTTP Error 404"
    else:
        monkeypatch.setenv("MOVINET_WEIGHTS_BASE_URL", f"http://127.0.0.1:{free_port()}")
        expected = "Connection refused"
    assert main(argv) == 1
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 2, err  # the "fetching" line, then the reason
    assert lines[1].startswith(f"movinet-service fetch: cannot fetch {NAME}: ") and expected in lines[1], err
    assert "Traceback" not in err
    assert cache_files(tmp_path) == []


@pytest.mark.parametrize("fault", ["truncated", "server_gone"])
def test_serve_that_cannot_fetch_exits_1_with_one_line_before_listening(www, tmp_path, fault):
    base_url, _, handler = www
    if fault == "truncated":
        handler.truncate.add(f"{NAME}.tar.gz")
    else:
        base_url = f"http://127.0.0.1:{free_port()}"
    port = free_port()
    done = subprocess.run([*_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--model", NAME,
                           "--weights", "kinetics600"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "MOVINET_WEIGHTS_BASE_URL": base_url,
                               "MOVINET_CACHE_DIR": str(tmp_path / "cache")})
    assert done.returncode == 1, done.stderr
    # stderr: the "fetching" line, tqdm's progress bar (cut at 50 % when truncated), the reason
    fetching, reason = [line for line in done.stderr.splitlines() if line.startswith("movinet-service")]
    assert fetching.startswith(f"movinet-service serve: fetching {NAME} (kinetics600) from {base_url}")
    assert reason.startswith(f"movinet-service serve: cannot fetch {NAME}: could not download"), done.stderr
    assert "Traceback" not in done.stderr
    assert cache_files(tmp_path) == []
    with socket.socket() as probe:  # the listener was closed
        assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_serve_fetches_missing_official_weights_at_startup(www, tmp_path):
    base_url, _, _ = www
    env = {"MOVINET_CACHE_DIR": str(tmp_path / "cache"), "MOVINET_WEIGHTS_BASE_URL": base_url}
    with cli_server(tmp_path / "serve.log", "--weights", "kinetics600", **env) as server:
        assert cache_files(tmp_path) == [CACHED]
        (entry,) = [e for e in httpx.get(server.http + "/models").json()["models"] if e["name"] == NAME]
        assert "kinetics600" in entry["weights"] and entry["default"] and entry["loaded"]
        assert entry["num_classes"] == 10  # the fixture checkpoint's head
        session = httpx.post(server.http + "/sessions", json={}, timeout=30).json()
        assert (session["model"], session["weights"]) == (NAME, "kinetics600")
    log = (tmp_path / "serve.log").read_text()
    assert f"fetching {NAME} (kinetics600) from {base_url}/{NAME}.tar.gz" in log
    assert "download" in log  # tqdm's progress bar, on stderr
    assert log.index("fetching") < log.index("model_loaded")


def test_serve_with_a_weights_file_takes_its_model(tmp_path, monkeypatch):
    import model
    from tests.model.helpers import randomized

    monkeypatch.delenv("MOVINET_REDIS_URL", raising=False)
    net = randomized(NAME, num_classes=3)
    net.labels = ["wave", "clap", "jump"]
    path = model.save_weights(net, tmp_path / "mine.safetensors")
    with cli_server(tmp_path / "serve.log", "--weights", str(path)) as server:
        (entry,) = [e for e in httpx.get(server.http + "/models").json()["models"] if e["name"] == NAME]
        assert "mine" in entry["weights"] and entry["loaded"]
        # the facts of the weights sessions get, not of the model's other (bundled) weights
        assert (entry["input_size"], entry["clip_frames"], entry["num_classes"]) == \
            (net.info.input_size, net.info.clip_frames, 3)
        session = httpx.post(server.http + "/sessions", json={}, timeout=30).json()
        assert session["weights"] == "mine"
        labels = httpx.get(server.http + f"/models/{NAME}/labels", params={"weights": "mine"}).json()
        assert labels["labels"] == net.labels, labels
    # the same file, named by a model it does not hold; a file that is not there (the real
    # command: an in-process run would share this process's logging with earlier servers)
    port = str(free_port())
    for argv, line in (
        (["--model", "movinet_a0_stream", "--weights", str(path)],
         f"movinet-service serve: weights file {path} holds {NAME}, not movinet_a0_stream"),
        (["--weights", str(tmp_path / "nope.safetensors")],
         f"movinet-service serve: weights file {tmp_path / 'nope.safetensors'} does not exist"),
    ):
        done = subprocess.run([*_command(), "serve", "--port", port, *argv], capture_output=True, text=True,
                              timeout=120, env={**os.environ, "MOVINET_LOG_LEVEL": "info"})
        assert (done.returncode, done.stderr.splitlines()) == (2, [line]), done.stderr
