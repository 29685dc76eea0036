"""``movinet-service serve``: the embedded default (gateway + inference, in-memory state)."""

from __future__ import annotations

import argparse
import logging
import sys

from service.logs import kv

log = logging.getLogger("service.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movinet-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the HTTP/WebSocket server",
                                description="Run the server. Every option also reads MOVINET_<NAME> "
                                "from the environment; a command-line option wins.")
    serve.add_argument("--host", help="bind address (MOVINET_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (MOVINET_PORT, default 8000)")
    serve.add_argument("--model", help="default model (MOVINET_MODEL, default movinet_a0_stream)")
    serve.add_argument("--weights", help="default weights tag (MOVINET_WEIGHTS, default the model's first)")
    serve.add_argument("--allow-random-weights", action="store_true", default=None,
                       help="also serve models without trained weights (demos, tests)")
    serve.add_argument("--torch-threads", type=int, help="torch threads for inference (0 = torch default)")
    serve.add_argument("--log-level", help="debug, info, warning (MOVINET_LOG_LEVEL)")
    return parser


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app
    from service.logs import setup_logging
    from service.settings import Settings

    overrides = {key: value for key, value in {
        "host": args.host, "port": args.port, "model": args.model, "weights": args.weights,
        "allow_random_weights": args.allow_random_weights, "torch_threads": args.torch_threads,
        "log_level": args.log_level,
    }.items() if value is not None}
    settings = Settings(**overrides)
    setup_logging(settings.log_level)
    app = create_app(settings)
    config = uvicorn.Config(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), log_config=None,
        ws_max_size=settings.ws_transport_max_bytes, ws_per_message_deflate=False,
        timeout_graceful_shutdown=10, lifespan="on",
    )
    server = DrainingServer(config, app)
    log.info(kv("serving", url=f"http://{settings.host}:{settings.port}", model=settings.model))
    server.run()
    return 0


def _uvicorn_server():
    import uvicorn

    class _DrainingServer(uvicorn.Server):
        """Closes our sockets with a goodbye message (and 1012) before uvicorn drops them."""

        def __init__(self, config, app):
            super().__init__(config)
            self._app = app

        async def shutdown(self, sockets=None):
            sessions = getattr(self._app.state, "sessions", None)
            if sessions is not None:
                self._app.state.draining = True
                await sessions.drain()
            await super().shutdown(sockets=sockets)

    return _DrainingServer


def DrainingServer(config, app):  # noqa: N802 - a class factory, so that importing cli stays light
    return _uvicorn_server()(config, app)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
