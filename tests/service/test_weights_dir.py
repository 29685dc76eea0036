"""``MOVINET_WEIGHTS_DIR``: every stream-model weights file in the folder is a weights choice (its
stem the tag), listed by ``GET /models`` and used by ``POST /sessions``; other files are skipped."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

import model
from service.registry import ModelRegistry, scan_weights_dir
from tests.model.helpers import randomized
from tests.service.conftest import (
    TEST_MODEL,
    collect_until_close,
    moving_frames,
    results_of,
    run_server,
    send_images,
    stream_url,
)

pytestmark = pytest.mark.service

LABELS = {"birds": ["sparrow", "crow", "owl"], "movinet_test_stream_tools": ["saw", "drill", "hammer", "file"]}


@pytest.fixture()
def weights_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "weights"
    for seed, (stem, labels) in enumerate(LABELS.items()):
        net = randomized(TEST_MODEL, num_classes=len(labels), seed=seed)
        net.labels = list(labels)
        model.save_weights(net, folder / f"{stem}.safetensors")
    model.save_weights(randomized("movinet_test_base", num_classes=2), folder / "base.safetensors")
    (folder / "notes.safetensors").write_text("not weights")
    (folder / "README.txt").write_text("ignored: not .safetensors")
    return folder


def test_scan_keeps_stream_models_and_names_tags_by_stem(weights_dir: Path, caplog) -> None:
    found = scan_weights_dir(weights_dir)
    # The cache's naming (<model>_<tag>) gives the tag alone.
    assert found == {TEST_MODEL: {"birds": weights_dir / "birds.safetensors",
                                  "tools": weights_dir / "movinet_test_stream_tools.safetensors"}}
    skipped = [r.getMessage() for r in caplog.records if "weights_file_skipped" in r.getMessage()]
    assert len(skipped) == 2 and any("base model" in line for line in skipped)
    with pytest.raises(ValueError, match="is not a folder"):
        scan_weights_dir(weights_dir / "missing")
    registry = ModelRegistry(TEST_MODEL, None, False, weights_dir=weights_dir)
    assert registry.resolve(TEST_MODEL, "tools") == (TEST_MODEL, "tools")
    assert {"birds", "tools"} <= set(registry.weights_of(TEST_MODEL))


async def _labels_of(server, session) -> list[dict]:
    frames = moving_frames(6, seed=3)
    async with connect(stream_url(server, session)) as ws:
        await ws.recv()
        await send_images(ws, frames, [k / 5 for k in range(len(frames))])
        await ws.send(json.dumps({"type": "eos"}))
        return results_of(await collect_until_close(ws))


def test_weights_files_are_listed_and_sessions_on_each_get_their_labels(weights_dir: Path) -> None:
    with run_server(weights_dir=weights_dir) as server:
        (entry,) = [e for e in httpx.get(server.http + "/models").json()["models"] if e["name"] == TEST_MODEL]
        assert {"birds", "tools"} <= set(entry["weights"])
        for tag, stem in (("birds", "birds"), ("tools", "movinet_test_stream_tools")):
            session = server.create(weights=tag, top_k=1)
            assert session["weights"] == tag
            results = asyncio.run(_labels_of(server, session))
            assert results and all(r["labels"][0]["name"] in LABELS[stem] for r in results), results
            assert server.loaded(TEST_MODEL, tag).labels == LABELS[stem]
        # Both weights stay loaded side by side, and a path is never a weights choice of a request.
        listed = httpx.get(server.http + "/models").json()["models"]
        assert [e["loaded"] for e in listed if e["name"] == TEST_MODEL] == [True]
        refused = httpx.post(server.http + "/sessions", json={"model": TEST_MODEL,
                                                              "weights": str(weights_dir / "birds.safetensors")})
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "no_weights"
