"""The service's one configuration object, read once from ``MOVINET_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from service.options import DropPolicy
from service.store.frame_codec import FrameCodec


class Settings(BaseSettings):
    """Every knob of the service. ``MOVINET_<FIELD>`` in the environment sets a field.

    Limits have defaults sized for one CPU machine; a request over a limit gets a 4xx JSON error
    (HTTP) or an ``{"type": "error"}`` message (WebSocket), never a crash.
    """

    model_config = SettingsConfigDict(env_prefix="MOVINET_", env_file=None, extra="ignore")

    # Network.
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = Field(
        None, description="Base URL clients use to reach this server (for frames_url/labels_url); "
        "default: taken from the request."
    )
    # Limits on what a client may make the server read or keep open (service/api/limits.py).
    max_body_bytes: int = Field(64 * 1024, ge=1024, description="Largest HTTP request body (413 above it); "
                                "the WebRTC offer route has max_offer_body_bytes.")
    max_offer_body_bytes: int = Field(160 * 1024, ge=1024, description="Largest body of POST "
                                      "/sessions/{id}/webrtc: a 64 KiB SDP, JSON-escaped, and room to spare.")
    http_head_timeout_s: float = Field(10.0, gt=0, description="A connection must send a whole request head "
                                       "(request line and headers) within this long, and then its body within as "
                                       "long again, else 408 and close.")
    http_keep_alive_s: int = Field(5, ge=1, description="An idle keep-alive connection is closed after this long.")
    max_connections: int | None = Field(None, ge=1, description="uvicorn's limit_concurrency: HTTP requests "
                                        "get 503 while this many connections (WebSockets included) are open. "
                                        "Unset: no limit beyond the OS's file descriptors.")
    ws_ping_interval_s: float = Field(20.0, gt=0, description="The server pings every WebSocket this often.")
    ws_ping_timeout_s: float = Field(20.0, gt=0, description="A WebSocket whose pong is this late is closed.")

    # Models.
    model: str = Field("movinet_a0_stream", description="Default model for new sessions.")
    weights: str | None = Field(None, description="Default weights: a tag (kinetics600 is fetched at startup when "
                                "not cached) or a .safetensors path (its metadata names the model); None = the "
                                "model's first available.")
    weights_dir: Path | None = Field(None, description="A folder of .safetensors weights files (read at start): "
                                     "each one of a stream model is a weights choice for it, its tag the file stem.")
    allow_random_weights: bool = Field(
        False, description="Serve models that have no trained weights (random init). For tests and demos."
    )
    cache_dir: Path | None = Field(None, description="Where fetched official weights are cached (model.io reads "
                                   "it from the environment); default ~/.cache/movinet.")
    weights_base_url: str | None = Field(None, description="Where official weights tarballs are fetched from "
                                         "(a mirror); default the TF Model Garden bucket.")
    preload: bool = Field(True, description="Load and warm the default model before /readyz turns ready.")
    torch_threads: int = Field(
        0, ge=0, description="torch intra-op threads for inference; 0 = auto: one less than the CPU cores "
        "(at least 1), leaving a core to decoding and the event loop.")
    device: str = Field("auto", description="Where models run: auto (the first CUDA GPU if torch sees one, "
                        "else the CPU), cpu, cuda or cuda:N.")
    backend: Literal["torch", "onnxruntime"] = Field(
        "torch", description="What runs the one-frame forwards: torch (model.optimize.for_streaming's fastest "
        "path that agrees with the model), or onnxruntime (the model exported to ONNX at load, checked equal "
        "to torch within 1e-4; CUDA provider when there is one).")
    torch_path: Literal["auto", "compiled", "graph", "graph-trace", "trace", "eager"] = Field(
        "auto", description="The torch path (for_streaming's backend): auto = the compiled graph once built "
        "(see compile), else the one-frame graph (channels-last, BN folded) as a TorchScript trace "
        "(graph-trace: its forward does not wait for the GIL after every op while the event loop and the "
        "decoders run Python; graph: the same graph run op by op); every path is checked against the model "
        "at load and gives way to the next if it differs.")
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32", description="Arithmetic of the forwards. fp32 (default): the model's logits to float rounding "
        "(~1e-7) whatever the batch, so a session replayed after a failover gets the calm run's labels. "
        "bf16 / auto (bf16 where the CPU has it natively): faster at large batches, half the state bytes, "
        "top-1 equal to fp32 on >= 99.5 % of frames (docs/benchmarks.md).")
    compile: Literal["off", "background", "now"] = Field(
        "off", description="Build the compiled path (torch.compile, inductor C++): off (default: the traced "
        "one-frame graph; at the batches a loaded worker runs the compiled graph is no faster, and a first "
        "build costs minutes of a core), background (serve with the traced graph meanwhile, switch when it "
        "passes its check; 1.5x faster forwards at 1 and 8 sessions), now (before the model counts as loaded).")

    # Access.
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated API keys; empty = POST /sessions is open."
    )

    # Sessions.
    max_sessions: int = Field(1024, ge=1, description="Sessions the store may hold at once (all gateways); "
                              "beyond it 429. Load decides before that: see admission_max_lag_s.")
    unused_session_timeout_s: float = Field(
        30.0, ge=0, description="A session that never got a frame expires this long after its creation (0: "
        "the idle timeout only); RTSP sessions are exempt (their camera may take a while).")
    admission_max_lag_s: float = Field(
        0.25, gt=0, description="New sessions get 503 + Retry-After while frames wait longer than this for "
        "inference on every worker (or every worker holds its maximum): admitted sessions keep their latency.")
    admission_probe_s: float = Field(
        3.0, ge=0, description="Once frames wait over a third of admission_max_lag_s, new sessions are admitted "
        "one per this many seconds (the others: 503 saturated + Retry-After), so that each one's load shows "
        "in the lag before the next is let in. 0: off.")
    max_sessions_per_client: int = Field(
        64, ge=0, description="Live sessions one client (API key, else address) may hold at once, across "
        "gateways; beyond it 429 + Retry-After until one of them is deleted or expires. 0: no limit.")
    create_rate_per_min: float = Field(600.0, gt=0, description="POST /sessions per minute per client (API "
                                       "key, else address), on each gateway.")
    create_burst: int = Field(200, ge=1, description="POST /sessions a client may make at once (a camera "
                              "gateway opening its cameras, a load test).")
    idle_timeout_s: float = Field(60.0, gt=0, description="Default idle timeout of a session.")
    max_idle_timeout_s: float = Field(3600.0, gt=0)
    reaper_interval_s: float = Field(1.0, gt=0)
    max_watchers_per_session: int = Field(8, ge=1, description="Labels-only sockets per session.")

    # Ingest limits.
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest accepted WS message.")
    max_frame_pixels: int = Field(3840 * 2160, ge=64 * 64, description="Largest decoded frame (w*h).")
    max_backlog_s: float = Field(
        10.0, gt=0, description="Seconds of model frames a session may have waiting for inference (at the "
        "model's frame rate). It covers a worker's crash and takeover, so a crash costs latency, not frames.")
    max_backlog: int | None = Field(None, ge=1, description="The same limit in model frames, instead of "
                                    "max_backlog_s.")
    drop_policy: DropPolicy = "drop_oldest"
    max_video_buffer_bytes: int = Field(
        16 * 1024 * 1024, ge=64 * 1024,
        description="Undecoded video bytes buffered per stream before the socket stops reading.",
    )
    decode_threads: int = Field(2, ge=1, description="Threads decoding still images.")
    decode_budget_pixels: int = Field(
        2 * 3840 * 2160, ge=0, description="Coded pixels of the video streams (WebSocket video, RTSP) this "
        "process decodes at once: two 4K, eight 1080p or 54 640x480 streams (a decoder holds ~25 bytes per "
        "coded pixel: ~0.4 GB in all). A stream that does not fit gets decoder_busy. 0: no limit.")
    decode_max_pixel_rate: float = Field(
        1920 * 1080 * 30, ge=0, description="Coded pixels per second one video stream may decode (1080p at "
        "30 fps); a faster stream is slowed (its sender by TCP). 0: no limit.")
    decode_total_pixel_rate: float | None = Field(
        None, ge=0, description="Coded pixels per second all video streams of this process may decode "
        "together; unset: a 1080p30 stream's worth per core. 0: no limit.")
    decode_nice: int = Field(5, ge=0, le=19, description="How much nicer decode threads run than the event loop "
                             "and the inference thread, which serve every session (Linux). 0: the same.")
    exact_preprocess: bool = Field(
        True, description="Resize with model.preprocess (as the model's evaluation does); false: swscale, faster."
    )

    # Server-side sources: RTSP cameras, WebRTC peers.
    rtsp_allow_private_addresses: bool = Field(
        False, description="Let RTSP sources open private, loopback and link-local addresses (cameras on "
        "the LAN, tests). Off by default: a client must not make the server reach its own network.")
    rtsps_verify: bool = Field(True, description="Check an rtsps:// camera's TLS certificate and name (the "
                               "system's CAs and rtsps_ca_file). Off: any certificate, for self-signed cameras.")
    rtsps_ca_file: str | None = Field(None, description="A PEM file of CAs (or self-signed camera certificates) "
                                      "trusted for rtsps:// cameras, beside the system's.")
    webrtc_ice_servers: list[dict[str, Any]] = Field(
        default_factory=list, description='STUN/TURN servers for WebRTC peers, as JSON: [{"urls": '
        '"turn:turn.example.org:3478", "username": "u", "credential": "p"}]; given to clients too. '
        "Empty: host candidates only (no outside STUN server).")

    # Inference.
    max_batch: int = Field(64, ge=1, description="Most sessions in one forward.")
    batch_wait_ms: float = Field(0.0, ge=0, description="Wait this long for more sessions before a forward.")
    results_cap: int = Field(1000, ge=1, description="Results kept per session for resume.")
    checkpoint_every: int = Field(
        25, ge=1, description="Checkpoint a session's state every K frames (and on release); the frame log "
        "is trimmed up to the checkpoint, so a resumed session replays at most K frames.")
    checkpoint_interval_s: float = Field(
        0.0, ge=0, description="Also checkpoint a session this many seconds after its last checkpoint (0: "
        "off). With a large MOVINET_CHECKPOINT_EVERY the cadence is one of time: fewer checkpoint bytes per "
        "camera, a longer replay after a takeover and a longer frame log (interval x frame rate frames).")
    checkpoint_log_bytes: int = Field(
        16_000_000, ge=0, description="Also checkpoint a session once the frames logged since its last "
        "checkpoint hold more than this many bytes (as stored: see frame_codec; 0: off). A bound on each "
        "session's frame log in Redis and on a takeover's replay whatever the cadence by frames or time; "
        "the default (16 MB: 180 raw 172x172 frames) is never reached with checkpoint_every=25.")
    checkpoint_half: bool = Field(False, description="Store float32 state tensors as float16 (half the bytes, "
                                  "not exact). A bf16 worker (precision) checkpoints its bf16 tensors as bf16 "
                                  "with or without it: exact, half of float32.")
    frame_codec: FrameCodec = Field(
        "raw", description="How the Redis frame log stores model frames (the gateway encodes, the worker "
        "decodes for the live forward and any replay alike, so exactly-once holds with every codec): raw "
        "(default: the fitted uint8 pixels, the model's exact input), png / webp-lossless (lossless, 52 % / "
        "37 % of raw at 172 px), webp / jpeg (lossy, frame_quality; webp at 90: 8 % of raw, the top-1 label "
        "of raw on every frame of the measured clips, docs/deploy.md). The embedded store keeps raw frames.")
    frame_quality: int = Field(90, ge=1, le=100, description="Quality of the lossy frame codecs (webp, jpeg).")

    # Storage and the worker pool.
    redis_url: str | None = Field(
        None, description="redis://host:port/db. Unset: the embedded default (one process, state in memory). "
        "Required by the gateway and worker roles.")
    redis_socket_timeout_s: float = Field(30.0, gt=0, description="Redis reply timeout (above any blocking read).")
    worker_id: str | None = Field(None, description="This worker's name in leases; default host-pid-random.")
    worker_host: str = Field("0.0.0.0", description="Bind address of a worker's /healthz, /readyz, /metrics.")
    worker_port: int = Field(8001, description="Port of a worker's /healthz, /readyz, /metrics.")
    worker_max_sessions: int = Field(256, ge=1, description="Most sessions one worker holds leases on.")
    lease_ttl_ms: int = Field(
        2000, ge=200, description="A lease lives this long unless renewed (every quarter of it). A worker "
        "whose process died (its Redis connection closed) loses its sessions within half of it, a stalled "
        "one when its leases run out.")
    claim_interval_s: float = Field(0.05, gt=0, description="How often a worker looks for sessions to claim.")
    release_idle_s: float = Field(10.0, gt=0, description="A worker releases a session without frames for this long.")
    drain_timeout_s: float = Field(
        20.0, gt=0, description="On SIGTERM a worker stops claiming, checkpoints and releases its sessions "
        "within this bound, then exits.")

    # Logging.
    log_level: str = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("rtsps_ca_file")
    @classmethod
    def _readable_ca_file(cls, value: str | None) -> str | None:
        if value:  # at start-up, not at a camera's first connection
            import ssl

            try:
                ssl.create_default_context().load_verify_locations(cafile=value)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(f"not a readable PEM file of certificates ({type(exc).__name__})") from None
        return value

    @property
    def ws_transport_max_bytes(self) -> int:
        """The WebSocket layer's own cap: above it the socket closes with 1009.

        Kept well above ``max_message_bytes`` so that an oversized message gets a polite error
        and the connection goes on; only absurd messages cost the connection.
        """
        return 4 * self.max_message_bytes
