"""Request and response bodies of the HTTP API (they are the OpenAPI schema)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class WebSocketSource(BaseModel):
    """Frames arrive on ``WS /sessions/{id}/stream``.

    Other source types (``rtsp``, ``webrtc``) will join this as a union on ``type``.
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["websocket"] = "websocket"
    input: Literal["auto", "images", "video"] = Field(
        "auto", description="`images`: one JPEG/PNG/WebP per binary message; `video`: chunks of one "
        "WebM/MP4/H.264 stream; `auto`: decided by the first bytes of the first message.")
    frame_rate: float | None = Field(
        None, gt=0, le=240, description="Frame rate of a video stream that has no timestamps (raw H.264). "
        "Without it such frames are timed by arrival.")


class WindowPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["windowed", "unbounded"] = Field(
        "windowed", description="`windowed`: labels reflect about the last `frames` frames (two staggered "
        "states reset in turn), fit for endless streams; `unbounded`: the stream model pools over every "
        "frame since the start, as in training on short clips.")
    frames: int | None = Field(None, ge=2, le=10_000, description="Window length; default the model's clip length.")


class BackpressurePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["drop_oldest", "newest_only"] | None = Field(
        None, description="What to drop when inference falls behind; default the server's (drop_oldest).")
    max_backlog: int | None = Field(None, ge=1, le=1000, description="Model frames that may wait; "
                                    "default the server's setting, never above it.")


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="A name from GET /models; default the server's default model.")
    weights: str | None = Field(None, description="A weights tag of that model; default its first.")
    source: WebSocketSource = Field(default_factory=WebSocketSource)
    top_k: int = Field(5, ge=1, le=100)
    min_score: float = Field(0.0, ge=0.0, le=1.0, description="Labels scored below this are left out.")
    smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Exponential smoothing of scores over frames: "
                             "score = smoothing * previous + (1 - smoothing) * current.")
    window: WindowPolicy = Field(default_factory=WindowPolicy)
    backpressure: BackpressurePolicy = Field(default_factory=BackpressurePolicy)
    idle_timeout_s: float | None = Field(None, gt=0, description="Seconds without frames or messages "
                                         "before the session expires; default the server's.")


class SessionCreated(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    session_id: str
    token: str = Field(description="Secret for this session's sockets and routes; shown only once.")
    model: str
    weights: str
    frame_rate: float = Field(description="Frames per second the model runs at; inputs are resampled to it.")
    input_size: int = Field(description="Side of the square frames the model sees.")
    labels_url: str = Field(description="WebSocket URL of the labels-only stream (for dashboards).")
    frames_url: str = Field(description="WebSocket URL to send frames to (and get labels back).")
    expires_at: float = Field(description="Unix time when the session expires if idle (moves with activity).")


class Label(BaseModel):
    id: int
    name: str
    score: float


class LastResult(BaseModel):
    seq: int
    pts: float | None
    frame_index: int
    labels: list[Label]


class SessionStatus(BaseModel):
    model_config = ConfigDict(protected_namespaces=())
    session_id: str
    model: str
    weights: str
    state: Literal["idle", "streaming"] = Field(description="`streaming` while a client sends frames.")
    created_at: float
    expires_at: float
    frames_received: int = Field(description="Model frames accepted (after resampling to the model's fps).")
    frames_processed: int
    frames_dropped: int
    backlog: int = Field(description="Model frames waiting for inference.")
    lag_ms: float | None = Field(description="Frame-to-label lag of the last result.")
    last_result: LastResult | None
    options: dict


class SessionPage(BaseModel):
    sessions: list[SessionStatus]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    total: int


class ModelEntry(BaseModel):
    name: str
    weights: list[str]
    default: bool
    loaded: bool
    input_size: int | None = None
    frame_rate: float | None = None
    clip_frames: int | None = None
    num_classes: int | None = None


class ModelList(BaseModel):
    models: list[ModelEntry]


class ModelLabels(BaseModel):
    name: str
    weights: str
    labels: list[str]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody
