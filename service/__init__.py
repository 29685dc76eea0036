"""Live video action recognition over HTTP/WebSocket around MoViNet stream models.

The embedded default runs the gateway (FastAPI), the decoders and the inference loop in one
process with in-memory state; see :func:`service.app.create_app`.
"""

__all__ = ["create_app", "Settings"]


def __getattr__(name: str):
    # Lazy, so that `import service.client` does not pull in FastAPI and torch.
    if name == "create_app":
        from service.app import create_app

        return create_app
    if name == "Settings":
        from service.settings import Settings

        return Settings
    raise AttributeError(name)
