import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import model
from model.io.weights import read_metadata

from .helpers import randomized


def test_weights_file_rebuilds_its_model_with_labels_and_metadata(tmp_path):
    net = randomized("movinet_test_stream", num_classes=3)
    net.labels = ["wave", "clap", "jump"]
    path = model.save_weights(net, tmp_path / "w.safetensors", extra={"note": "test"})
    meta = read_metadata(path)
    assert meta["model"] == "movinet_test_stream" and meta["labels"] == ["wave", "clap", "jump"]
    assert meta["info"]["frame_rate"] == net.info.frame_rate and meta["extra"] == {"note": "test"}
    again = model.load_model(path)
    video = torch.rand(1, 3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(video)[0], again(video)[0])
    assert again.labels == ["wave", "clap", "jump"]
    same = model.create_model("movinet_test_stream", weights=str(path))
    assert same.num_classes == 3
    with pytest.raises(ValueError, match="holds movinet_test_stream, not movinet_test_base"):
        model.create_model("movinet_test_base", weights=str(path))


def test_strict_load_names_missing_unexpected_and_misshaped_tensors(tmp_path):
    net = randomized("movinet_test_stream", num_classes=3)
    path = model.save_weights(net, tmp_path / "w.safetensors")
    tensors = load_file(str(path))
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    del tensors["blocks.0.rezero"]
    tensors["blocks.0.extra"] = torch.zeros(1)
    tensors["head.bn.weight"] = torch.zeros(5)
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata=metadata)
    with pytest.raises(ValueError) as error:
        model.load_model(tmp_path / "bad.safetensors")
    message = str(error.value)
    assert "missing (1): blocks.0.rezero" in message
    assert "unexpected (1): blocks.0.extra" in message
    assert "head.bn.weight: file (5,) vs model (48,)" in message


def test_unknown_weights_and_non_weight_files_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no weights 'nope'"):
        model.create_model("movinet_test_stream", weights="nope")
    with pytest.raises(ValueError, match="does not exist"):
        model.create_model("movinet_test_stream", weights=str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="not a safetensors file"):
        model.load_model(junk)
    with pytest.raises(ValueError, match="python -m model.weights fetch"):
        model.create_model("movinet_a0_stream", weights="kinetics600")


def test_state_bytes_round_trip_and_reject_garbage():
    net = randomized("movinet_test_stream", use_positional_encoding=True)
    _, state = net(torch.rand(2, 3, 3, 32, 32))
    data = model.state_to_bytes(state)
    back = model.state_from_bytes(data)
    assert back.keys() == state.keys()
    for key in state:
        assert torch.equal(back[key], state[key]) and back[key].dtype == state[key].dtype
    half = model.state_from_bytes(model.state_to_bytes(state, half=True))
    assert len(model.state_to_bytes(state, half=True)) < len(data)
    assert torch.allclose(half["state_head_pool_buffer"], state["state_head_pool_buffer"], rtol=1e-3)
    assert half["state_head_pool_frame_count"].dtype == torch.int32
    with pytest.raises(ValueError):
        model.state_from_bytes(b"garbage")
    header = json.dumps({"__metadata__": {"format": "other"}}).encode()
    with pytest.raises(ValueError, match="not a movinet-state blob"):
        model.state_from_bytes(len(header).to_bytes(8, "little") + header)


def test_stack_and_split_reject_mismatched_states():
    net = randomized("movinet_test_stream")
    a = net.init_state(1, 32, 32)
    b = randomized("movinet_a0_stream").init_state(1, 32, 32)
    with pytest.raises(ValueError, match="other keys"):
        model.stack_states([a, b])
    with pytest.raises(ValueError, match="do not add up"):
        model.split_states(model.stack_states([a, a]), sizes=[1, 2])
