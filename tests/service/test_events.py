"""Action segments from per-frame scores: hysteresis, updates, a change of action, checkpoints."""

from __future__ import annotations

import numpy as np

from service.options import EventOptions
from service.worker.events import EventDetector

NAMES = ["static", "pan left", "zoom in"]


def scores(label: int, score: float) -> np.ndarray:
    probs = np.full(3, (1.0 - score) / 2, np.float32)
    probs[label] = score
    return probs


def run(detector: EventDetector, sequence: list[tuple[int, float]], start_seq: int = 1) -> list[dict]:
    events = []
    for k, (label, score) in enumerate(sequence):
        seq = start_seq + k
        events += detector.step(scores(label, score), seq, (seq - 1) / 5, now=1000.0 + seq)
    return events


def test_a_segment_starts_after_enter_frames_and_ends_after_exit_frames():
    detector = EventDetector(EventOptions(enter_score=0.6, exit_score=0.4, enter_frames=3, exit_frames=2,
                                          update_every_s=100), NAMES)
    sequence = [(1, 0.7)] * 2 + [(1, 0.5)] + [(1, 0.8)] * 3 + [(1, 0.9)] * 5 + [(0, 0.45)] * 3
    # 0.5 < enter_score breaks the first run of two; the segment starts at frame 4 (pts 0.6).
    events = run(detector, sequence)
    assert [(e["phase"], e["label"]) for e in events] == [("start", "pan left"), ("end", "pan left")]
    start, end = events
    assert (start["start_seq"], start["start_pts"]) == (4, 0.6)
    assert (end["start_pts"], end["end_seq"], end["end_pts"]) == (0.6, 11, 2.0)  # the last frame above 0.4
    assert end["frames"] == 8 and 0.8 < end["score"] < 0.9


def test_a_new_action_ends_the_old_one_and_updates_come_while_it_lasts():
    detector = EventDetector(EventOptions(enter_score=0.6, exit_score=0.3, enter_frames=2, exit_frames=5,
                                          update_every_s=1.0), NAMES)
    events = run(detector, [(1, 0.9)] * 10 + [(2, 0.9)] * 4)
    phases = [(e["phase"], e["label"]) for e in events]
    assert phases == [("start", "pan left"), ("update", "pan left"), ("end", "pan left"), ("start", "zoom in")]
    assert events[1]["end_pts"] == 1.0 and events[3]["start_pts"] == 2.0


def test_the_detector_state_survives_a_checkpoint():
    options = EventOptions(enter_score=0.6, exit_score=0.4, enter_frames=2, exit_frames=2, update_every_s=100)
    sequence = [(1, 0.9)] * 6 + [(0, 0.2)] * 3
    calm = run(EventDetector(options, NAMES), sequence)
    first = EventDetector(options, NAMES)
    before = run(first, sequence[:4])
    second = EventDetector(options, NAMES)
    second.load(first.to_dict())
    after = run(second, sequence[4:], start_seq=5)
    assert before + after == calm
