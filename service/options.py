"""A session's options, typed: what ``POST /sessions`` decided, stored with the record.

The request (:class:`service.api.schemas.SessionCreate`) is validated by pydantic; the session
service resolves it against the model and the server's limits into one :class:`SessionOptions`,
which the store keeps as JSON and parses back into this type once, where the record is read.
Every other module reads attributes, never string keys.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

DropPolicy = Literal["drop_oldest", "newest_only", "block"]
InputKind = Literal["auto", "images", "video"]
WindowKind = Literal["windowed", "tumbling", "unbounded"]


@dataclass(frozen=True)
class SourceOptions:
    """Where the frames come from. ``url`` is the redacted camera URL (the real one is secret)."""

    type: str = "websocket"  # websocket | webrtc | rtsp
    input: InputKind = "auto"
    frame_rate: float | None = None
    url: str | None = None
    transport: str = "tcp"
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0
    reconnect_delay_s: float = 1.0
    max_reconnect_delay_s: float = 30.0
    max_reconnects: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields of this source type only, as the request had them."""
        out: dict[str, Any] = {"type": self.type}
        if self.type == "websocket":
            out.update(input=self.input, frame_rate=self.frame_rate)
        elif self.type == "rtsp":
            out.update(url=self.url, transport=self.transport, open_timeout_s=self.open_timeout_s,
                       read_timeout_s=self.read_timeout_s, reconnect_delay_s=self.reconnect_delay_s,
                       max_reconnect_delay_s=self.max_reconnect_delay_s, max_reconnects=self.max_reconnects)
        return out


@dataclass(frozen=True)
class WindowOptions:
    policy: WindowKind = "windowed"
    frames: int | None = None  # resolved at creation: the model's clip length unless given

    @property
    def length(self) -> int | None:
        """Frames a label may depend on; None: every frame since the start (unbounded)."""
        return None if self.policy == "unbounded" else self.frames


# The store's backlog limit under ``block``: never reached, because the producer waits while
# ``max_backlog`` frames wait (an integer Redis's Lua still prints as one).
NEVER_DROP = 1_000_000_000


@dataclass(frozen=True)
class BackpressureOptions:
    """``drop_oldest`` / ``newest_only``: the store drops frames beyond :attr:`keep` (live
    sources: a label must be about now). ``block``: the producer waits while ``max_backlog``
    frames wait, which slows its source (a recording: every frame gets a label)."""

    policy: DropPolicy = "drop_oldest"
    max_backlog: int = 8

    @property
    def keep(self) -> int:
        """Frames the store keeps waiting for inference before it drops the oldest."""
        if self.policy == "block":
            return NEVER_DROP
        return 1 if self.policy == "newest_only" else self.max_backlog

    @property
    def blocks(self) -> bool:
        return self.policy == "block"


@dataclass(frozen=True)
class EventOptions:
    """Action segments from the labels, with hysteresis (:mod:`service.worker.events`)."""

    enabled: bool = True
    enter_score: float = 0.5
    exit_score: float = 0.3
    enter_frames: int = 3
    exit_frames: int = 3
    update_every_s: float = 5.0
    webhook_url: str | None = None  # redacted: the real one is in the record's (secret) extra


@dataclass(frozen=True)
class SessionOptions:
    source: SourceOptions = field(default_factory=SourceOptions)
    top_k: int = 5
    min_score: float = 0.0
    smoothing: float = 0.0
    window: WindowOptions = field(default_factory=WindowOptions)
    backpressure: BackpressureOptions = field(default_factory=BackpressureOptions)
    events: EventOptions = field(default_factory=EventOptions)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["source"] = self.source.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionOptions:
        """Parse what :meth:`to_dict` wrote; raises ``ValueError`` on anything else."""
        try:
            return cls(
                source=SourceOptions(**data.get("source", {})),
                top_k=int(data.get("top_k", 5)),
                min_score=float(data.get("min_score", 0.0)),
                smoothing=float(data.get("smoothing", 0.0)),
                window=WindowOptions(**data.get("window", {})),
                backpressure=BackpressureOptions(**data.get("backpressure", {})),
                events=EventOptions(**data.get("events", {})),
            )
        except (TypeError, AttributeError) as exc:
            raise ValueError(f"not session options: {exc}") from None
