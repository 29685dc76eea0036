"""Request and response bodies of the HTTP API (they are the OpenAPI schema).

Request numbers are strict: an integer field takes only a JSON integer (not ``true``, ``1.0`` or
``"1"``), a number field an integer or a finite float (not ``true`` nor a string).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

MIN_IDLE_TIMEOUT_S = 1.0
NAME_MAX_LENGTH = 128  # a model name or weights tag (the longest today is 20 characters)


# The slowest declared stream rate: a frame every 100 s (a time-lapse camera). Slower ones made
# pts of 1e301 s, and 5e-324 an infinite frame duration.
MIN_STREAM_FPS = 0.01


class WebSocketSource(BaseModel):
    """Frames arrive on ``WS /sessions/{id}/stream`` (or from a WebRTC peer, see ``webrtc``)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["websocket"] = "websocket"
    input: Literal["auto", "images", "video"] = Field(
        "auto", description="`images`: one JPEG/PNG/WebP per binary message; `video`: chunks of one "
        "WebM/MP4/H.264 stream; `auto`: decided by the first bytes of the first message.")
    frame_rate: float | None = Field(
        None, ge=MIN_STREAM_FPS, le=240, strict=True, allow_inf_nan=False,
        description="Frame rate of a video stream that has no timestamps (raw H.264), from 0.01 (a frame every "
        "100 s) to 240. Without it such frames are timed by arrival.")


class RtspSource(BaseModel):
    """The server pulls an RTSP camera (rtsp:// or rtsps://) and reconnects when it drops or stalls."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["rtsp"]
    url: str = Field(max_length=2048, description="rtsp:// or rtsps:// URL; credentials in it are never "
                     "returned nor logged. Private, loopback and link-local addresses are refused unless "
                     "the server allows them (MOVINET_RTSP_ALLOW_PRIVATE_ADDRESSES).")
    transport: Literal["tcp", "udp"] = Field("tcp", description="RTP over the RTSP TCP connection, or over UDP.")
    open_timeout_s: float = Field(10.0, gt=0, le=120, strict=True, description="Give up opening the stream after this long.")
    read_timeout_s: float = Field(5.0, gt=0, le=120, strict=True, description="A stream without data this long is reopened.")
    reconnect_delay_s: float = Field(1.0, gt=0, le=60, strict=True, description="First wait before reopening; doubles "
                                     "after each connection that gave no frame.")
    max_reconnect_delay_s: float = Field(30.0, gt=0, le=600, strict=True, description="Longest wait between tries.")
    max_reconnects: int | None = Field(None, ge=0, le=1_000_000, strict=True, description="Give up after this many tries in a row that "
                                       "gave no frame (state `failed`); null: never.")


class WebRtcSource(BaseModel):
    """Frames arrive from a WebRTC peer: ``POST /sessions/{id}/webrtc`` with an SDP offer.

    A ``websocket`` session takes a WebRTC peer too (and a ``webrtc`` one a ``/stream`` socket), one
    producer at a time; the type says what the client means to use (metrics, status).
    """

    model_config = ConfigDict(extra="forbid")
    type: Literal["webrtc"]


SOURCE_TYPES = ("websocket", "rtsp", "webrtc")


def _source_type(value: Any) -> str | None:
    kind = value.get("type", "websocket") if isinstance(value, dict) else getattr(value, "type", "websocket")
    return kind if isinstance(kind, str) and kind in SOURCE_TYPES else None


Source = Annotated[
    Annotated[WebSocketSource, Tag("websocket")] | Annotated[RtspSource, Tag("rtsp")]
    | Annotated[WebRtcSource, Tag("webrtc")],
    Discriminator(_source_type, custom_error_type="invalid_source",
                  custom_error_message="must be an object whose type is websocket, rtsp or webrtc"),
]


class WindowPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["windowed", "tumbling", "unbounded"] = Field(
        "windowed", description="`windowed`: labels reflect about the last `frames` frames (two staggered "
        "states reset in turn), fit for endless streams; `tumbling`: one state reset every `frames` frames, "
        "the last label of a window held while the next has seen fewer than `frames // 2` frames: half the compute of `windowed`, "
        "labels follow a change up to half a window later; `unbounded`: the stream model pools over every "
        "frame since the start, as in training on short clips.")
    frames: int | None = Field(None, ge=2, le=10_000, strict=True, description="Window length; default the model's clip length.")


class BackpressurePolicy(BaseModel):
    model_config = ConfigDict(extra="forbid")
    policy: Literal["drop_oldest", "newest_only", "block"] | None = Field(
        None, description="When inference falls behind: `drop_oldest` drops the oldest waiting frame, "
        "`newest_only` keeps only the newest (live sources); `block` drops nothing and stops reading the "
        "socket while `max_backlog` frames wait, so the sender slows down (recordings). Default the "
        "server's (drop_oldest).")
    max_backlog: int | None = Field(None, ge=1, le=1000, strict=True, description="Model frames that may wait; "
                                    "default the server's setting, never above it.")


class EventPolicy(BaseModel):
    """Action segments from the labels, with hysteresis: ``{"type": "event"}`` messages and
    ``GET /sessions/{id}/events``."""

    model_config = ConfigDict(extra="forbid")
    enabled: bool = Field(True, strict=True)
    enter_score: float = Field(0.5, gt=0.0, le=1.0, description="A class starts a segment when its score is at "
                               "least this for `enter_frames` frames in a row.")
    exit_score: float = Field(0.3, ge=0.0, le=1.0, description="The segment ends when its score stays below "
                              "this for `exit_frames` frames (or another class starts one).")
    enter_frames: int = Field(3, ge=1, le=1000, strict=True)
    exit_frames: int = Field(3, ge=1, le=1000, strict=True)
    update_every_s: float = Field(5.0, gt=0.0, le=3600.0, description="An `update` event this often "
                                  "(stream seconds) while a segment lasts.")
    webhook_url: str | None = Field(None, max_length=2048, description="Each frame's events are also POSTed "
                                    "here as JSON (http:// or https://; its addresses are checked like a camera's; "
                                    "retried on errors). Secrets in it are never returned nor logged.")

    @model_validator(mode="after")
    def _exit_not_above_enter(self) -> EventPolicy:
        # Hysteresis: a segment that ends above the score that starts one would end as it starts.
        # An exit_score left to its default follows a lower enter_score; one given above it is refused.
        if self.exit_score > self.enter_score:
            if "exit_score" in self.model_fields_set:
                raise PydanticCustomError("exit_above_enter", "exit_score must be at most enter_score ({enter})",
                                          {"enter": self.enter_score})
            self.exit_score = self.enter_score
        return self


class SessionCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, max_length=NAME_MAX_LENGTH,
                              description="A name from GET /models; default the server's default model.")
    weights: str | None = Field(None, max_length=NAME_MAX_LENGTH,
                                description="A weights tag of that model; default its first.")
    source: Source = Field(default_factory=WebSocketSource, description="Where frames come from: `websocket` "
                           "(default), `webrtc` or `rtsp`.")
    top_k: int = Field(5, ge=1, le=100, strict=True)
    min_score: float = Field(0.0, ge=0.0, le=1.0, strict=True, description="Labels scored below this are left out.")
    smoothing: float = Field(0.0, ge=0.0, lt=1.0, strict=True, description="Exponential smoothing of scores over frames: "
                             "score = smoothing * previous + (1 - smoothing) * current.")
    window: WindowPolicy = Field(default_factory=WindowPolicy)
    backpressure: BackpressurePolicy = Field(default_factory=BackpressurePolicy)
    events: EventPolicy = Field(default_factory=EventPolicy)
    idle_timeout_s: float | None = Field(
        None, strict=True, allow_inf_nan=False, json_schema_extra={"minimum": MIN_IDLE_TIMEOUT_S},
        description="Seconds without frames or messages before the session expires; default the server's "
        "(MOVINET_IDLE_TIMEOUT_S). Allowed: 1 to the server's MOVINET_MAX_IDLE_TIMEOUT_S (3600 by default); "
        "a value outside is refused (422), never clamped.")

    @field_validator("idle_timeout_s")
    @classmethod
    def _idle_timeout_in_range(cls, value: float | None, info: ValidationInfo) -> float | None:
        # The upper bound is the server's setting: the route passes it as validation context.
        highest = (info.context or {}).get("max_idle_timeout_s")
        if value is not None and (value < MIN_IDLE_TIMEOUT_S or (highest is not None and value > highest)):
            allowed = f"between {MIN_IDLE_TIMEOUT_S:g} and {highest:g}" if highest is not None \
                else f"at least {MIN_IDLE_TIMEOUT_S:g}"
            raise PydanticCustomError("idle_timeout_range", "must be {allowed} seconds", {"allowed": allowed})
        return value


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
    webrtc_url: str = Field(description="HTTP URL to POST a WebRTC SDP offer to (with the token).")
    ice_servers: list[dict[str, Any]] = Field(
        default_factory=list, description="STUN/TURN servers for the WebRTC peer (RTCPeerConnection `iceServers`).")


class Label(BaseModel):
    id: int
    name: str
    score: float


class LastResult(BaseModel):
    seq: int
    pts: float | None
    frame_index: int
    labels: list[Label]


class SourceStatus(BaseModel):
    """A server-side source: an RTSP puller or a WebRTC peer."""

    type: Literal["rtsp", "webrtc"]
    state: str = Field(description="rtsp: `connecting`, `streaming`, `reconnecting`, `failed`, `stopped`; "
                       "webrtc: the peer connection's state (`new`, `connecting`, `connected`, ...).")
    url: str | None = Field(None, description="The camera URL, credentials hidden.")
    transport: str | None = None
    reconnects: int = 0
    last_error: str | None = None
    connected_at: float | None = None
    last_frame_at: float | None = None
    retry_in_s: float | None = Field(None, description="While reconnecting: the wait before the next try.")


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
    source: SourceStatus | None = Field(None, description="The RTSP puller or WebRTC peer feeding the session.")


class SessionPage(BaseModel):
    sessions: list[SessionStatus]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
    total: int


class ModelEntry(BaseModel):
    """A stream model sessions can use, with the weights this server has for it."""

    model_config = ConfigDict(protected_namespaces=())
    name: str = Field(description="The model's name, for `model` in `POST /sessions`.")
    weights: list[str] = Field(description="Its weights tags here, for `weights` in `POST /sessions`; the "
                               "first is the default (`random`: untrained, only with MOVINET_ALLOW_RANDOM_WEIGHTS).")
    default: bool = Field(description="The server's default model (a session that names none gets it).")
    loaded: bool = Field(description="Loaded in this process (with any of its weights); a session with another "
                         "model or weights loads them first.")
    input_size: int | None = Field(None, description="Side in pixels of the square frames the model sees.")
    frame_rate: float | None = Field(None, description="Frames per second the model runs at; inputs are "
                                     "resampled to it.")
    clip_frames: int | None = Field(None, description="Frames of the clips it was trained on: the default "
                                    "`window.frames` (how many frames a label reflects).")
    num_classes: int | None = Field(None, description="Number of classes; only once the model is loaded "
                                    "(`loaded`), else null: `GET /models/{name}/labels` loads it and names them.")
    runtime: dict[str, Any] | None = Field(None, description="Once loaded: what runs its forwards here: `backend` "
                                           "(compiled, graph, graph-trace, trace, eager, onnxruntime), `precision`, `compiling` "
                                           "(a compiled path still being built in the background) and "
                                           "`compiled_batch_sizes`.")


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


class EventList(BaseModel):
    events: list[dict[str, Any]] = Field(description="The session's latest action events, oldest first: "
                                         '`{"type": "event", "phase": "start|update|end", "label", "label_id", '
                                         '"start_seq", "start_pts", "end_seq", "end_pts", "score", "frames", "at"}`.')
