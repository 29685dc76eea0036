import pytest
import torch

import model
from model.registry import build_model

from .helpers import randomized

# Trainable parameters of MovinetClassifier(num_classes=600) in the official TF code.
OFFICIAL_PARAMS = {
    "a0": (3_111_799, 3_748_031),
    "a1": (4_690_296, 6_447_352),
    "a2": (5_249_562, 7_326_962),
    "a3": (7_397_545, 10_986_618),
    "a4": (11_349_463, 18_136_182),
    "a5": (18_650_523, 31_495_934),
    "t0": (1_727_414, 2_368_958),
}


@pytest.mark.parametrize("backbone", sorted(OFFICIAL_PARAMS))
def test_parameter_counts_equal_the_official_ones(backbone):
    for mode, expected in zip(("base", "stream"), OFFICIAL_PARAMS[backbone]):
        net = build_model(f"movinet_{backbone}_{mode}", 600)
        assert sum(p.numel() for p in net.parameters()) == expected, mode


def test_list_models_names_every_variant():
    names = model.list_models()
    for backbone in ("a0", "a1", "a2", "a3", "a4", "a5", "t0", "test"):
        assert f"movinet_{backbone}_base" in names and f"movinet_{backbone}_stream" in names


def test_kinetics_labels_ship_with_the_package():
    net = build_model("movinet_a0_stream", 600)
    assert len(net.labels) == 600 and net.labels[0] != "class_0"
    assert "abseiling" in net.labels


def test_a0_stream_state_names_and_shapes_follow_the_official_ones():
    net = build_model("movinet_a0_stream", 10)
    state = net.init_state(1, 172, 172)
    # official (TF, channels-last): state_block1_layer0_stream_buffer (1, 2, 22, 22, 80)
    assert tuple(state["state_block1_layer0_stream_buffer"].shape) == (1, 80, 2, 22, 22)
    assert tuple(state["state_block2_layer0_stream_buffer"].shape) == (1, 184, 4, 11, 11)
    assert tuple(state["state_block4_layer0_stream_buffer"].shape) == (1, 384, 4, 6, 6)
    assert tuple(state["state_block0_layer0_pool_buffer"].shape) == (1, 24, 1, 1, 1)
    assert tuple(state["state_head_pool_buffer"].shape) == (1, 480, 1, 1, 1)
    assert state["state_head_pool_frame_count"].dtype == torch.int32
    assert "state_block4_layer1_stream_buffer" not in state  # 1x5x5 layers have no temporal buffer
    assert "state_block0_layer0_pos_enc_frame_count" not in state
    pe = build_model("movinet_a3_stream", 10).init_state(2, 64, 64)
    assert tuple(pe["state_block0_layer0_pos_enc_frame_count"].shape) == (2,)


@pytest.mark.parametrize("name,size", [("movinet_test_stream", 33), ("movinet_a0_stream", 48)])
def test_frame_by_frame_equals_whole_clip_equals_uneven_chunks(name, size):
    net = randomized(name, use_positional_encoding=True) if "test" in name else randomized(name)
    video = torch.rand(2, 3, 7, size, size)
    with torch.no_grad():
        whole, whole_state = net(video)
        state, steps = None, []
        for t in range(7):
            logits, state = net(video[:, :, t : t + 1], state)
            steps.append(logits)
        chunked_state = None
        for start, stop in ((0, 3), (3, 4), (4, 7)):
            chunked, chunked_state = net(video[:, :, start:stop], chunked_state)
        per_frame, _ = net(video, None, per_frame=True)
    assert torch.allclose(steps[-1], whole, atol=1e-5)
    assert torch.allclose(chunked, whole, atol=1e-5)
    assert torch.allclose(torch.stack(steps, dim=1), per_frame, atol=1e-5)
    for key in whole_state:
        assert torch.allclose(whole_state[key].float(), state[key].float(), atol=1e-5), key
        assert torch.allclose(whole_state[key].float(), chunked_state[key].float(), atol=1e-5), key


def test_batch_of_sessions_at_different_positions_equals_each_alone():
    net = randomized("movinet_test_stream", use_positional_encoding=True)
    a, b = torch.rand(1, 3, 5, 32, 32), torch.rand(1, 3, 2, 32, 32)
    with torch.no_grad():
        _, state_a = net(a[:, :, :4])  # session A is 4 frames in
        _, state_b = net(b[:, :, :1])  # session B is 1 frame in
        alone_a, next_a = net(a[:, :, 4:5], state_a)
        alone_b, next_b = net(b[:, :, 1:2], state_b)
        batched, batched_state = net(
            torch.cat([a[:, :, 4:5], b[:, :, 1:2]]), model.stack_states([state_a, state_b])
        )
    assert torch.allclose(batched[0], alone_a[0], atol=1e-6)
    assert torch.allclose(batched[1], alone_b[0], atol=1e-6)
    split_a, split_b = model.split_states(batched_state)
    assert split_a["state_head_pool_frame_count"].item() == 5
    assert split_b["state_head_pool_frame_count"].item() == 2
    for key in next_a:
        assert torch.allclose(split_a[key].float(), next_a[key].float(), atol=1e-6), key
        assert torch.allclose(split_b[key].float(), next_b[key].float(), atol=1e-6), key


def test_base_model_is_non_causal_and_has_no_state():
    net = randomized("movinet_test_base")
    video = torch.rand(1, 3, 4, 33, 33)
    with torch.no_grad():
        logits, state = net(video)
        later = video.clone()
        later[:, :, -1] = 0.0
        changed, _ = net(later)
    assert state == {} and logits.shape == (1, 7)
    assert not torch.allclose(logits, changed)  # the last frame matters to the clip's logits
    with pytest.raises(ValueError, match="causal"):
        net(video, per_frame=True)


def test_bad_inputs_raise_clear_value_errors():
    net = build_model("movinet_test_stream", 5)
    with pytest.raises(ValueError, match="floating point"):
        net(torch.zeros(1, 3, 2, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        net(torch.rand(1, 4, 2, 32, 32))
    with pytest.raises(ValueError, match=r"\[B, 3, T, H, W\]"):
        net(torch.rand(3, 32, 32))
    other = build_model("movinet_a0_stream", 5).init_state(1, 32, 32)
    with pytest.raises(ValueError, match="unexpected"):
        net(torch.rand(1, 3, 1, 32, 32), other)
    partial = net.init_state(1, 32, 32)
    del partial["state_head_pool_buffer"]
    with pytest.raises(ValueError, match=r"missing \['state_head_pool_buffer'\]"):
        net(torch.rand(1, 3, 1, 32, 32), partial)
    with pytest.raises(ValueError, match="has shape"):
        net(torch.rand(2, 3, 1, 32, 32), net.init_state(1, 32, 32))
    with pytest.raises(ValueError, match="has shape"):
        net(torch.rand(1, 3, 1, 64, 64), net.init_state(1, 32, 32))
    with pytest.raises(ValueError, match="unknown model"):
        model.create_model("movinet_a9_stream")
    with pytest.raises(ValueError, match="unknown model options"):
        model.create_model("movinet_test_stream", gate="nope")
    with pytest.raises(ValueError, match="hard_sigmoid"):
        model.create_model("movinet_test_stream", hard_sigmoid="nope")


def test_hard_sigmoid_is_a_model_option_with_the_checkpoint_default():
    keras2 = randomized("movinet_test_stream")
    garden = randomized("movinet_test_stream", hard_sigmoid="model_garden")
    assert keras2.mode.hard_sigmoid == "keras2"
    video = torch.rand(1, 3, 2, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(keras2(video)[0], garden(video)[0])
    x = torch.tensor([-3.0, 0.0, 1.0, 3.0])
    from model.layers import hard_sigmoid_keras2, hard_sigmoid_model_garden

    assert torch.allclose(hard_sigmoid_keras2(x), torch.tensor([0.0, 0.5, 0.7, 1.0]))
    assert torch.allclose(hard_sigmoid_model_garden(x), torch.tensor([0.0, 0.50001, 0.66668, 1.00002]))


def test_folding_batchnorm_keeps_the_outputs():
    from model.optimize import optimize_for_inference

    net = randomized("movinet_test_stream", use_positional_encoding=True)
    fast = optimize_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in fast.modules())
    video = torch.rand(2, 3, 4, 33, 33)
    with torch.no_grad():
        expected, expected_state = net(video)
        got, got_state = fast(video)
    assert torch.allclose(got, expected, atol=1e-5)
    for key in expected_state:
        assert torch.allclose(got_state[key].float(), expected_state[key].float(), atol=1e-5), key
