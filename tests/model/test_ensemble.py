import pytest
import torch

from model.ensemble import Ensemble

from .helpers import randomized


def test_temporal_ensemble_averages_even_and_odd_frame_members_in_stream_mode():
    a, b = randomized("movinet_test_stream", seed=1), randomized("movinet_test_stream", seed=2)
    ensemble = Ensemble([a, b], strides=(2, 2), offsets=(0, 1))
    video = torch.rand(1, 3, 6, 32, 32)
    with torch.no_grad():
        whole, _ = ensemble(video)
        expected = (a(video[:, :, 0::2])[0] + b(video[:, :, 1::2])[0]) / 2
        state, step = None, None
        for t in range(6):
            step, state = ensemble(video[:, :, t : t + 1], state)
    assert torch.allclose(whole, expected, atol=1e-6)
    assert torch.allclose(step, whole, atol=1e-5)
    assert all(key.startswith(("m0/", "m1/", "logits/", "frame_index")) for key in state)


def test_ensemble_of_different_resolutions_and_bad_members():
    a, b = randomized("movinet_test_base", seed=1), randomized("movinet_test_base", seed=2)
    ensemble = Ensemble([a, b], sizes=(32, 40))
    video = torch.rand(1, 3, 3, 36, 36)
    with torch.no_grad():
        logits, state = ensemble(video)
    assert logits.shape == (1, 7) and state == {}
    with pytest.raises(ValueError, match="classes"):
        Ensemble([a, randomized("movinet_test_base", num_classes=3)])
    with pytest.raises(ValueError, match="stream models or all base"):
        Ensemble([a, randomized("movinet_test_stream")])
