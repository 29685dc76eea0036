import numpy as np
import pytest
import torch

from model.preprocess import fit_frame, prepare_frame, preprocess_frames


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


@pytest.mark.parametrize("height, width, size, short_side", [(240, 320, 64, None), (1080, 1920, 172, 192),
                                                           (300, 100, 64, 72), (40, 48, 64, None), (64, 64, 64, None)])
def test_fit_frame_is_the_float_preprocessing_within_one_grey_level(height, width, size, short_side):
    """fit_frame resizes in uint8; prepare_frame (the official float preprocessing) in float: the
    same picture within one grey level of 255, on noise (the worst case) and on smooth detail,
    shrinking, enlarging and not resizing."""
    rng = np.random.default_rng(height + width)
    noise = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    ramp = np.broadcast_to((np.arange(width)[None, :, None] * 255 // width).astype(np.uint8), (height, width, 3))
    for rgb in (noise, np.ascontiguousarray(ramp)):
        fitted = fit_frame(rgb, size, short_side)
        reference = (prepare_frame(rgb, size, short_side).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        assert fitted.shape == (size, size, 3) and fitted.dtype == np.uint8
        assert np.abs(fitted.astype(int) - reference).max() <= 1
    read_only = noise.copy()
    read_only.flags.writeable = False  # what np.asarray of a Pillow image gives
    fitted = fit_frame(read_only, size, short_side)
    assert fitted.flags.writeable and not np.shares_memory(fitted, read_only)


def test_fit_frame_rejects_what_is_not_a_uint8_rgb_frame():
    with pytest.raises(ValueError, match="uint8"):
        fit_frame(np.zeros((10, 10, 3), np.float32), 8)
    with pytest.raises(ValueError, match="uint8"):
        fit_frame(np.zeros((10, 10), np.uint8), 8)
    with pytest.raises(ValueError, match="short_side"):
        fit_frame(np.zeros((10, 10, 3), np.uint8), 8, short_side=4)
