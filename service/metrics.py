"""Prometheus metrics, one registry per app (so that tests can build many apps in one process).

Names follow Prometheus conventions: prefix ``movinet_``, base units, ``_total`` on counters, and
no session ids in labels.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.sessions_active = Gauge("movinet_sessions_active", "Open sessions.", registry=registry)
        self.sessions_created = Counter("movinet_sessions_created_total", "Sessions created.", ["source"],
                                        registry=registry)
        self.sessions_closed = Counter("movinet_sessions_closed_total", "Sessions closed.", ["reason"],
                                       registry=registry)
        self.connections = Gauge("movinet_ws_connections", "Open WebSockets.", ["role"], registry=registry)
        self.sources_active = Gauge("movinet_sources_active", "Server-side sources: RTSP pullers, WebRTC peers.",
                                    ["type"], registry=registry)
        self.source_reconnects = Counter("movinet_source_reconnects_total",
                                         "RTSP connections lost or refused (each followed by a retry or a failure).",
                                         ["type"], registry=registry)
        self.messages_received = Counter("movinet_ws_messages_received_total", "Messages from clients.",
                                         ["kind"], registry=registry)
        self.frames_received = Counter(
            "movinet_frames_received_total", "Model frames accepted into sessions (after resampling).",
            ["input"], registry=registry)
        self.frames_processed = Counter("movinet_frames_processed_total", "Model frames inferred.",
                                        ["model"], registry=registry)
        self.frames_dropped = Counter(
            "movinet_frames_dropped_total", "Frames dropped: backpressure, too_large, late, error, store (unreachable).",
            ["reason"], registry=registry)
        self.ingest_wait_seconds = Counter(
            "movinet_ingest_wait_seconds_total", "Time producers of `block` sessions waited for the backlog "
            "to go down (their sources slowed, nothing dropped).", registry=registry)
        self.decode_errors = Counter("movinet_decode_errors_total", "Undecodable inputs.", ["code"],
                                     registry=registry)
        self.decode_pixels = Gauge("movinet_decode_pixels", "Coded pixels of the video streams being decoded "
                                   "(of MOVINET_DECODE_BUDGET_PIXELS).", registry=registry)
        self.decode_seconds = Histogram("movinet_decode_duration_seconds", "Still image decode + resize.",
                                        buckets=LATENCY_BUCKETS, registry=registry)
        self.inference_seconds = Histogram("movinet_inference_duration_seconds", "One batched forward.",
                                           ["model"], buckets=LATENCY_BUCKETS, registry=registry)
        self.batch_size = Histogram("movinet_batch_size", "Sessions per forward.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=registry)
        self.queue_wait_seconds = Histogram(
            "movinet_queue_wait_seconds", "Frame received → its forward starts.", buckets=LATENCY_BUCKETS,
            registry=registry)
        self.frame_latency_seconds = Histogram(
            "movinet_frame_latency_seconds", "Frame received → its label stored (server side).",
            buckets=LATENCY_BUCKETS, registry=registry)
        self.queue_lag_seconds = Gauge("movinet_queue_lag_seconds", "Age of the oldest frame in the last batch.",
                                       registry=registry)
        self.inference_errors = Counter("movinet_inference_errors_total", "Failed forwards.",
                                        registry=registry)
        # The worker side of the pool (also in the embedded mode, which runs one worker).
        self.backlog_frames = Gauge(
            "movinet_backlog_frames", "Model frames waiting in the sessions this worker holds (autoscaling).",
            registry=registry)
        self.unclaimed_sessions = Gauge(
            "movinet_unclaimed_sessions", "Sessions with frames waiting that no worker holds (autoscaling).",
            registry=registry)
        self.sessions_held = Gauge("movinet_worker_sessions", "Sessions this worker holds a lease on.",
                                   registry=registry)
        self.claims = Counter("movinet_worker_claims_total", "Leases taken; resumed = from a checkpoint.",
                              ["kind"], registry=registry)
        self.replayed_frames = Counter(
            "movinet_worker_replayed_frames_total", "Logged frames replayed after a checkpoint (no results).",
            registry=registry)
        self.leases_lost = Counter("movinet_worker_leases_lost_total", "Leases lost before release.",
                                   ["reason"], registry=registry)
        self.checkpoints = Counter("movinet_worker_checkpoints_total", "Checkpoints written.", registry=registry)
        self.checkpoint_bytes = Histogram(
            "movinet_worker_checkpoint_bytes", "Size of a checkpoint.", registry=registry,
            buckets=(1e4, 3e4, 1e5, 3e5, 1e6, 3e6, 1e7))
        self.store_errors = Counter("movinet_store_errors_total", "Failed calls to the state store.",
                                    ["role"], registry=registry)

        # Children that exist from the start, so that dashboards and alerts see zeros, not gaps.
        for reason in ("backpressure", "too_large", "late", "error", "store"):
            self.frames_dropped.labels(reason)
        for kind in ("image", "video"):
            self.frames_received.labels(kind)
        for role in ("stream", "labels"):
            self.connections.labels(role)
        self.sessions_created.labels("websocket")
        for kind in ("new", "resumed"):
            self.claims.labels(kind)
        for reason in ("stale", "store_error"):
            self.leases_lost.labels(reason)
        self.webhooks = Counter("movinet_webhooks_total", "Event batches POSTed to session webhooks, by outcome "
                                "(sent, refused, failed, dropped).", ["outcome"], registry=registry)

    def model_loaded(self, name: str) -> None:
        self.frames_processed.labels(name)
        self.inference_seconds.labels(name)
        self.batch_size.labels(name)

    def render(self) -> bytes:
        return generate_latest(self.registry)
