#!/usr/bin/env python3
"""Container health check for every role of the image: exit 0 when a route answers 200.

Usage: ``movinet-healthcheck [PATH] [PORT ...]`` (default ``/healthz`` on ``$MOVINET_PORT`` and
``$MOVINET_WORKER_PORT``). One image runs three roles: ``serve`` and ``gateway`` listen on
``MOVINET_PORT`` (8000), a ``worker`` on ``MOVINET_WORKER_PORT`` (8001); only one of them runs in
a container, so the first port that answers decides. Standard library only: the final image has
no curl.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def check(path: str, ports: list[str], timeout: float = 3.0) -> bool:
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as answer:
                return answer.status == 200
        except urllib.error.HTTPError:
            return False  # the role's server answered, and not with 200
        except OSError:
            continue  # nothing listens on this port: try the next role's
    return False


def main(argv: list[str]) -> int:
    path = argv[0] if argv else "/healthz"
    ports = argv[1:] or [os.environ.get("MOVINET_PORT", "8000"), os.environ.get("MOVINET_WORKER_PORT", "8001")]
    return 0 if check(path, ports) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
