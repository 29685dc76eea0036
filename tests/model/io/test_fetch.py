"""`python -m model.weights fetch` against a local HTTP server serving a tarball the test builds."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import tarfile
import threading
from pathlib import Path

import pytest
import torch

import model
from model.io.convert import convert_checkpoint
from model.io.fetch import main as weights_main
from model.io.weights import read_metadata

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "parity" / "test_stream" / "ckpt"
NAME = "movinet_test_stream"


@pytest.fixture()
def server(tmp_path):
    """Serve tmp_path/www on a free port; yields the base URL."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    httpd.shutdown()
    httpd.server_close()


def official_style_tarball(www: Path) -> str:
    """Pack the checkpoint as the official releases do: <name>/checkpoint, ckpt-*.index, ..."""
    staging = www.parent / "staging" / NAME
    shutil.copytree(FIXTURE, staging)
    archive = www / f"{NAME}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(staging, arcname=NAME)
    return hashlib.sha256(archive.read_bytes()).hexdigest()


def test_fetch_downloads_verifies_converts_and_caches(server, tmp_path, monkeypatch, capsys):
    base_url, www = server
    digest = official_style_tarball(www)
    monkeypatch.setenv("MOVINET_CACHE_DIR", str(tmp_path / "cache"))
    assert weights_main(["fetch", NAME, "--base-url", base_url, "--sha256", digest, "--quiet"]) == 0
    cached = Path(capsys.readouterr().out.strip())
    assert cached == tmp_path / "cache" / f"{NAME}_kinetics600.safetensors" and cached.is_file()
    assert "kinetics600" in model.available_weights(NAME)
    net = model.create_model(NAME, weights="kinetics600", hard_sigmoid="model_garden")
    converted = convert_checkpoint(FIXTURE, NAME, hard_sigmoid="model_garden")
    video = torch.rand(1, 3, 2, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(video)[0], converted(video)[0])
    meta = read_metadata(cached)
    assert meta["extra"]["source_sha256"] == digest
    (www / f"{NAME}.tar.gz").unlink()  # cached now: no second download
    assert weights_main(["fetch", NAME, "--base-url", base_url, "--quiet"]) == 0


def test_fetch_reports_a_wrong_checksum_a_missing_file_and_a_broken_archive(server, tmp_path, monkeypatch, capsys):
    base_url, www = server
    official_style_tarball(www)
    monkeypatch.setenv("MOVINET_CACHE_DIR", str(tmp_path / "cache"))
    assert weights_main(["fetch", NAME, "--base-url", base_url, "--sha256", "0" * 64, "--quiet"]) == 1
    assert "does not match the expected" in capsys.readouterr().err
    assert weights_main(["fetch", "movinet_test_base", "--base-url", base_url, "--quiet"]) == 1
    assert "could not download" in capsys.readouterr().err
    (www / f"{NAME}.tar.gz").write_bytes(b"not a tarball")
    assert weights_main(["fetch", NAME, "--base-url", base_url, "--quiet", "--force"]) == 1
    assert "not a valid tar.gz" in capsys.readouterr().err
    assert not (tmp_path / "cache" / f"{NAME}_kinetics600.safetensors").exists()
