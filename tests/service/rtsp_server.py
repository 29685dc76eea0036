"""A small RTSP server for the tests: serves a video file at real time on 127.0.0.1.

    /usr/bin/python3 tests/service/rtsp_server.py VIDEO --port 8554 [--mount /test]

Runs under the *system* Python (gst-rtsp-server comes through Debian's python3-gi, which a venv
does not see): Debian packages ``python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-libav``.

The file is decoded and re-encoded to H.264 (x264 without sliced threads, see
shared/reference/rtsp-and-browser-notes.md); an audio track goes to a fakesink. Each client gets
its own pipeline from the start of the file, and RTP/RTCP over UDP stays on 127.0.0.1.
Prints ``ready rtsp://127.0.0.1:PORT/MOUNT`` when it listens.
"""

from __future__ import annotations

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("video")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mount", default="/test")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))

    factory = GstRtspServer.RTSPMediaFactory()
    location = args.video.replace("\\", "\\\\").replace('"', '\\"')
    factory.set_launch(
        f'( filesrc location="{location}" ! decodebin name=decode '
        "decode. ! video/x-raw ! queue ! videoconvert ! video/x-raw,format=I420 "
        "! x264enc tune=zerolatency sliced-threads=false speed-preset=ultrafast key-int-max=25 bitrate=800 "
        "! rtph264pay name=pay0 pt=96 config-interval=1 "
        "decode. ! audio/x-raw ! queue ! fakesink async=false sync=false )"
    )
    factory.set_shared(False)  # every client from the start of the file
    pool = GstRtspServer.RTSPAddressPool()
    pool.add_range("127.0.0.1", "127.0.0.1", 40000, 49999, 0)  # UDP RTP/RTCP on loopback only
    factory.set_address_pool(pool)
    server.get_mount_points().add_factory(args.mount, factory)

    if server.attach(None) == 0:
        print(f"cannot listen on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
        return 1
    loop = GLib.MainLoop()
    GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, signal.SIGTERM, loop.quit)
    print(f"ready rtsp://127.0.0.1:{args.port}{args.mount}", flush=True)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
