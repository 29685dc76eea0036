import numpy as np
import pytest
import torch

from model.preprocess import preprocess_frames


def test_resize_short_side_then_centre_crop_then_scale():
    frames = np.zeros((2, 100, 200, 3), dtype=np.uint8)
    frames[:, :, 50:150] = 255  # a white band in the centre half of the width
    out = preprocess_frames(frames, 50)
    assert out.shape == (3, 2, 50, 50) and out.dtype == torch.float32
    # short side 100 -> 50 makes the frame 50x100; the centre 50 columns are the white band
    assert torch.allclose(out, torch.ones_like(out), atol=1e-6)
    wider = preprocess_frames(frames, 50, short_side=100)  # no resize, crop 50x50 from the middle
    assert torch.allclose(wider, torch.ones_like(wider))


def test_preprocess_rejects_wrong_inputs():
    with pytest.raises(ValueError, match="uint8"):
        preprocess_frames(np.zeros((1, 10, 10, 3), dtype=np.float32), 8)
    with pytest.raises(ValueError, match="RGB"):
        preprocess_frames(np.zeros((1, 10, 10), dtype=np.uint8), 8)


def test_resampler_decimates_by_timestamp_and_repeats_for_slow_sources():
    from model.preprocess import TimestampResampler

    fast = TimestampResampler(5.0)
    slots = [fast.push(i / 25) for i in range(51)]  # 2 s of 25 fps
    assert sum(len(s) for s in slots) == 11 and slots[0] == [0] and slots[5] == [1] and slots[4] == []
    jittery = TimestampResampler(5.0)
    arrivals = [0.0, 0.19, 0.21, 0.41, 0.405, 0.6]  # pts going backwards is refused
    assert [jittery.push(p) for p in arrivals] == [[0], [], [1], [2], None, [3]]
    slow = TimestampResampler(5.0)
    assert [slow.push(p) for p in (0.0, 0.5, 1.0)] == [[0], [1, 2], [3, 4, 5]]
    stalled = TimestampResampler(5.0, max_gap_s=1.0)
    assert [stalled.push(p) for p in (0.0, 10.0, 10.2)] == [[0], [50], [51]]
