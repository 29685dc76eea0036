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
    served_at: float = 0.0  # unix seconds: when the last tick that had its frame began

    @property
    def session_id(self) -> str:
        return self.state.session_id
