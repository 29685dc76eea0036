"""``movinet-service serve|gateway|worker``: the embedded default, or one role of the pool;
``movinet-service fetch``: official weights into the cache (images, air-gapped hosts)."""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys

from service.logs import kv

log = logging.getLogger("service.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="movinet-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    roles = {
        "serve": "run the whole service in one process: API + inference (in memory; with "
                 "MOVINET_REDIS_URL, on Redis)",
        "gateway": "run the API only (HTTP/WebSocket); workers do the inference (needs MOVINET_REDIS_URL)",
        "worker": "run an inference worker: lease sessions from Redis, batch, commit (needs MOVINET_REDIS_URL); "
                  "serves /healthz, /readyz and /metrics on MOVINET_WORKER_HOST:MOVINET_WORKER_PORT",
    }
    for name, help_text in roles.items():
        command = commands.add_parser(name, help=help_text, description=help_text + ". Every option also reads "
                                      "MOVINET_<NAME> from the environment; a command-line option wins.")
        if name == "worker":
            command.add_argument("--host", help="bind address of the health/metrics routes (MOVINET_WORKER_HOST)")
            command.add_argument("--port", type=int, help="port of the health/metrics routes (MOVINET_WORKER_PORT, "
                                 "default 8001)")
        else:
            command.add_argument("--host", help="bind address (MOVINET_HOST, default 127.0.0.1)")
            command.add_argument("--port", type=int, help="port (MOVINET_PORT, default 8000)")
        command.add_argument("--redis-url", help="redis://host:port/db (MOVINET_REDIS_URL)")
        command.add_argument("--model", help="default model (MOVINET_MODEL, default movinet_a0_stream; with a "
                             "weights file, the file's)")
        command.add_argument("--weights", help="default weights (MOVINET_WEIGHTS): a tag (default the model's "
                             "first; kinetics600 is fetched at startup when not cached) or a .safetensors file")
        command.add_argument("--allow-random-weights", action="store_true", default=None,
                             help="also serve models without trained weights (demos, tests)")
        command.add_argument("--torch-threads", type=int, help="torch threads for inference (0 = CPU cores - 1)")
        command.add_argument("--device", help="auto (default: a CUDA GPU if there is one), cpu, cuda, cuda:N "
                             "(MOVINET_DEVICE)")
        command.add_argument("--log-level", help="debug, info, warning (MOVINET_LOG_LEVEL)")
    fetch = commands.add_parser(
        "fetch", help="download, verify, convert and cache official weights (MOVINET_CACHE_DIR, default "
        "~/.cache/movinet); prints each file's path", description="Fill the weights cache before a server "
        "needs it: at an image's build, or on a host that cannot reach the download host later. A model "
        "already cached is not downloaded again.")
    fetch.add_argument("models", nargs="+", metavar="NAME", help="e.g. movinet_a2_stream")
    fetch.add_argument("--weights", default=OFFICIAL_TAG, choices=[OFFICIAL_TAG],
                       help="which official weights (only kinetics600 is published)")
    fetch.add_argument("--sha256", help="the tarball's expected sha256 (with one NAME)")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


OFFICIAL_TAG = "kinetics600"  # model.io.weights.OFFICIAL_TAG, without importing torch for --help


def fetch_official(name: str, prog: str, sha256: str | None = None, quiet: bool = False) -> str:
    """Fetch ``name``'s official weights into the cache; the file's path. Any failure (no network,
    a server gone mid-transfer, a bad checksum or archive) is :class:`FetchFailed`, one line,
    and leaves no file in the cache (model.io.fetch writes it under a temporary name)."""
    from model.io.fetch import fetch, official_url
    from model.io.weights import cached_path

    if cached_path(name).is_file():
        return str(cached_path(name))
    url = official_url(name)
    print(f"{prog}: fetching {name} ({OFFICIAL_TAG}) from {url} into {cached_path(name).parent}",
          file=sys.stderr, flush=True)
    try:
        path = fetch(name, sha256=sha256, quiet=quiet)
    except (ValueError, OSError) as exc:
        raise FetchFailed(f"{prog}: cannot fetch {name}: {one_line(exc)}") from None
    except Exception as exc:  # a converter's surprise is still one line, not a traceback
        raise FetchFailed(f"{prog}: cannot fetch {name}: {type(exc).__name__}: {one_line(exc)}") from None
    return str(path)


def one_line(exc: BaseException) -> str:
    """An error's message on one line (tarfile's and the converter's span several)."""
    return "; ".join(part.strip(" -") for part in str(exc).splitlines() if part.strip(" -"))


class FetchFailed(Exception):
    """Official weights could not be fetched; the message is the whole line to print."""


def fetch_command(args: argparse.Namespace) -> int:
    import model

    prog = "movinet-service fetch"
    unknown = [name for name in args.models if name not in model.list_models()]
    if unknown:
        print(f"{prog}: no model named {', '.join(unknown)}; one of {', '.join(model.list_models())}",
              file=sys.stderr)
        return 2
    if args.sha256 and len(args.models) > 1:
        print(f"{prog}: --sha256 checks one tarball: give one NAME", file=sys.stderr)
        return 2
    for name in args.models:
        try:
            print(fetch_official(name, prog, sha256=args.sha256, quiet=args.quiet), flush=True)
        except FetchFailed as exc:
            print(exc, file=sys.stderr)
            return 1
    return 0


def prepare_weights(settings):
    """The settings with a weights file's own model, after checking what the weights settings name
    (a file that is not there or holds another model, a weights folder that is not one: ``ValueError``)."""
    from service.registry import is_weights_path, scan_weights_dir, weights_file_choice

    if settings.cache_dir is not None:  # model.io reads these from the environment
        os.environ["MOVINET_CACHE_DIR"] = str(settings.cache_dir)
    if settings.weights_base_url:
        os.environ["MOVINET_WEIGHTS_BASE_URL"] = settings.weights_base_url
    if settings.weights_dir is not None:
        scan_weights_dir(settings.weights_dir)
    if is_weights_path(settings.weights):
        name, _ = weights_file_choice(settings.weights)
        if "model" in settings.model_fields_set and settings.model != name:
            raise ValueError(f"weights file {settings.weights} holds {name}, not {settings.model}")
        settings = settings.model_copy(update={"model": name})
    return settings


def needs_fetch(settings) -> bool:
    """The official weights are asked for and neither the cache, the package nor MOVINET_WEIGHTS_DIR has them."""
    if settings.weights != OFFICIAL_TAG:
        return False
    import model
    from service.registry import scan_weights_dir

    if settings.model not in model.list_models():
        return False  # the registry's own error says so
    in_dir = scan_weights_dir(settings.weights_dir).get(settings.model, {}) if settings.weights_dir else {}
    return OFFICIAL_TAG not in model.available_weights(settings.model) and OFFICIAL_TAG not in in_dir


def serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    from service.api.app import create_app
    from service.logs import install_redaction, setup_logging
    from service.settings import Settings

    role = args.command
    bind = ("worker_host", "worker_port") if role == "worker" else ("host", "port")
    overrides = {key: value for key, value in {
        bind[0]: args.host, bind[1]: args.port, "redis_url": args.redis_url, "model": args.model,
        "weights": args.weights, "allow_random_weights": args.allow_random_weights,
        "torch_threads": args.torch_threads, "device": args.device, "log_level": args.log_level,
    }.items() if value is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:  # one line per bad setting; never the value (it may be a secret)
        for error in exc.errors():
            name = "MOVINET_" + "_".join(str(part) for part in error["loc"]).upper() if error["loc"] else "settings"
            print(f"movinet-service {role}: {name}: {error['msg']}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # a JSON setting that is not JSON: its name, not its value
        field = str(exc).split('"')[1] if str(exc).count('"') >= 2 else "a setting"
        print(f"movinet-service {role}: MOVINET_{field.upper()}: not valid JSON", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        settings = prepare_weights(settings)
        app = create_app(settings, role=role)
    except ValueError as exc:
        print(f"movinet-service {role}: {exc}", file=sys.stderr)
        return 2
    host, port = getattr(settings, bind[0]), getattr(settings, bind[1])
    config = uvicorn_config(app, settings, host=host, port=port, log_level=settings.log_level.lower(),
                            log_config=None)
    install_redaction()  # again, now that uvicorn has configured its loggers
    server = DrainingServer(config, app)
    try:  # bound before the lifespan starts: a port in use fails here, before a model loads
        listener = listen(host, port, config.backlog)
    except OSError as exc:
        reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
        print(f"movinet-service {role}: cannot listen on {host}:{port}: {reason}", file=sys.stderr)
        return 1
    if needs_fetch(settings):  # before the model loads (and before /healthz answers)
        try:
            fetch_official(settings.model, f"movinet-service {role}")
        except FetchFailed as exc:
            listener.close()
            print(exc, file=sys.stderr)
            return 1
    log.info(kv("serving", role=role, url=f"http://{host}:{port}", model=settings.model,
                store="redis" if settings.redis_url else "memory"))
    server.run(sockets=[listener])
    return 0


def uvicorn_config(app, settings, **overrides):
    """The uvicorn configuration every server of ours runs (the tests' too): bounded heads,
    idle and keep-alive timeouts, WebSocket pings, the transport's message cap.

    ``h11_max_incomplete_event_size`` only matters if someone runs it with ``http="h11"``; the
    default protocol is httptools with :mod:`service.api.limits`' guard on top.
    """
    import uvicorn

    from service.api.limits import MAX_HEAD_BYTES, guarded_protocol

    options = dict(
        http=guarded_protocol(settings.http_head_timeout_s),
        timeout_keep_alive=settings.http_keep_alive_s,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        limit_concurrency=settings.max_connections,
        ws_max_size=settings.ws_transport_max_bytes, ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_s, ws_ping_timeout=settings.ws_ping_timeout_s,
        timeout_graceful_shutdown=10, lifespan="on",
    )
    return uvicorn.Config(app, **{**options, **overrides})


def listen(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """The listening socket for ``host:port`` (IPv4, or IPv6 for an address with a colon)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=backlog)


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
    return fetch_command(args) if args.command == "fetch" else serve(args)


if __name__ == "__main__":
    sys.exit(main())
