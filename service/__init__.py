"""Live video action recognition over HTTP/WebSocket around MoViNet stream models.

Where things are (a frame's path runs top to bottom; docs/architecture.md draws it):

* ``api/`` — the FastAPI app (:func:`service.api.app.create_app`), HTTP routes, the WebSocket
  routes, request/response schemas;
* ``sessions.py``, ``hub.py`` — session lifecycle and each session's one frame producer;
* ``sources/`` — every way frames arrive (WebSocket images or video, RTSP, WebRTC), one pipe
  each into the session's :class:`~service.sources.ingest.FrameSink`;
* ``store/`` — sessions, per-session stream logs (frames, leases, checkpoints) and results, in
  memory or in Redis;
* ``worker/`` — the lease/commit loop, and the runner with its state bank, the only part that
  runs torch; the action-event detector;
* ``pump.py``, ``messages.py`` — labels out to a client, and every message's shape;
* ``client/`` — ``movinet-client`` and :class:`~service.client.MovinetClient`;
* ``settings.py``, ``options.py``, ``registry.py``, ``metrics.py``, ``logs.py``, ``errors.py``,
  ``cli.py`` — configuration, typed session options, loaded models, and the plumbing.

The embedded default runs the gateway, the decoders and the inference loop in one process with
in-memory state.
"""

__all__ = ["create_app", "Settings"]


def __getattr__(name: str):
    # Lazy, so that `import service.client` does not pull in FastAPI and torch.
    if name == "create_app":
        from service.api.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(name)
