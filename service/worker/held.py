"""What a worker keeps of each session it holds a lease on, and the worker's default name."""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass, field

from service.store import Lease
from service.worker.runner import SessionState


def default_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


@dataclass
class Held:
    """A session this worker holds a lease on: its model state and where it stands."""

    state: SessionState
    lease: Lease
    cursor: int = 0  # seq of the last frame whose result is committed (the state matches it when fed == cursor)
    fed: int = 0  # seq of the last frame fed to the model
    since_checkpoint: int = 0
    log_bytes: int = 0  # bytes of the logged frames the last checkpoint does not cover (as stored)
    checkpointed_at: float = field(default_factory=time.monotonic)  # the last checkpoint (or the claim)
    backlog: int = 0  # frames waiting after the last commit
    webhook_url: str | None = None  # the session's events also go here
    last_frame_at: float = field(default_factory=time.monotonic)
    pts_offset: float | None = None  # arrival - pts of its stream's first frame (when frames are due)
    last_pts: float | None = None

    def due_at(self, received_at: float, pts: float | None) -> float:
        """When a frame was due by its stream's clock: the first frame's arrival, moved on by pts. A
        client sending a recording faster than real time sends frames before they are due."""
        if pts is None:
            return received_at
        if self.pts_offset is None or (self.last_pts is not None and pts < self.last_pts):  # a new stream
            self.pts_offset = received_at - pts
        self.last_pts = pts
        return pts + self.pts_offset

    @property
    def session_id(self) -> str:
        return self.state.session_id
