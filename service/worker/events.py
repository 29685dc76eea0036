"""Per-frame labels into action segments: "pan left from 12.4 s to 19.0 s (mean score 0.81)".

An :class:`EventDetector` follows one session's scores with hysteresis: a class *enters* when
its score is at least ``enter_score`` for ``enter_frames`` frames in a row (the segment starts at
the first of them), and the segment *ends* when that score stays below ``exit_score`` for
``exit_frames`` frames (it ends at the last frame above) or another class enters. While a
segment lasts an ``update`` goes out every ``update_every_s`` of stream time. Each event is a
client message ``{"type": "event", "phase": "start" | "update" | "end", ...}``.

The worker runs it after each forward and commits the events with the frame's result, so they
are computed once and delivered exactly once like the labels; its state travels in checkpoints
and is rebuilt by the replay after a takeover.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from service.options import EventOptions


@dataclass
class _Segment:
    label_id: int
    start_seq: int
    start_pts: float | None
    last_seq: int
    last_pts: float | None
    score_sum: float = 0.0
    frames: int = 0
    updated_pts: float | None = None


class EventDetector:
    def __init__(self, options: EventOptions, names: list[str]) -> None:
        self.options = options
        self.names = names
        self.active: _Segment | None = None
        self.candidate: _Segment | None = None  # a class above enter_score, not yet for long enough
        self.below = 0  # frames in a row the active class has been below exit_score

    def step(self, probs: np.ndarray, seq: int, pts: float | None, now: float) -> list[dict[str, Any]]:
        """The events this frame makes (usually none)."""
        opts = self.options
        events: list[dict[str, Any]] = []
        best = int(np.argmax(probs))
        best_score = float(probs[best])
        active = self.active
        # A class other than the active one, above enter_score: how long in a row?
        if best_score < opts.enter_score or (active is not None and best == active.label_id):
            self.candidate = None
        elif self.candidate is None or self.candidate.label_id != best:
            self.candidate = _Segment(best, seq, pts, seq, pts, best_score, 1)
        else:
            self.candidate.last_seq, self.candidate.last_pts = seq, pts
            self.candidate.score_sum += best_score
            self.candidate.frames += 1
        entered = self.candidate is not None and self.candidate.frames >= opts.enter_frames
        if active is not None:
            score = float(probs[active.label_id])
            if score >= opts.exit_score:
                self.below = 0
                active.last_seq, active.last_pts = seq, pts
                active.score_sum += score
                active.frames += 1
            else:
                self.below += 1
            if self.below >= opts.exit_frames or entered:
                events.append(self._event("end", active, now))
                self.active = active = None
                self.below = 0
            elif (self.below == 0 and pts is not None and active.updated_pts is not None
                  and pts - active.updated_pts >= opts.update_every_s):
                active.updated_pts = pts
                events.append(self._event("update", active, now, end_pts=pts))
        if active is None and entered:
            segment = self.candidate
            assert segment is not None
            self.active, self.candidate, self.below = segment, None, 0
            segment.updated_pts = segment.start_pts
            events.append(self._event("start", segment, now))
        return events

    def _event(self, phase: str, segment: _Segment, now: float, end_pts: float | None = None) -> dict[str, Any]:
        label = self.names[segment.label_id] if segment.label_id < len(self.names) else str(segment.label_id)
        event: dict[str, Any] = {
            "type": "event", "phase": phase, "label": label, "label_id": segment.label_id,
            "start_seq": segment.start_seq, "start_pts": segment.start_pts,
            "score": round(segment.score_sum / max(1, segment.frames), 4), "frames": segment.frames, "at": now,
        }
        if phase == "end":
            event.update(end_seq=segment.last_seq, end_pts=segment.last_pts)
        elif phase == "update":
            event.update(end_pts=end_pts)
        return event

    # --- checkpoints --------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"active": asdict(self.active) if self.active else None,
                "candidate": asdict(self.candidate) if self.candidate else None, "below": self.below}

    def load(self, data: dict[str, Any]) -> None:
        self.active = _Segment(**data["active"]) if data.get("active") else None
        self.candidate = _Segment(**data["candidate"]) if data.get("candidate") else None
        self.below = int(data.get("below", 0))
