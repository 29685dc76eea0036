"""rtsps:// cameras: the relay checks the camera's certificate and name (MOVINET_RTSPS_VERIFY,
MOVINET_RTSPS_CA_FILE), against a real TLS server with a self-signed certificate."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from service.settings import Settings
from service.sources import urls
from service.sources.rtsp_guard import RtspRelay, tls_context
from service.sources.urls import SourceRefused, parse_url
from tests.service.conftest import TEST_MODEL, run_server


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsCamera:
    """A TLS port on 127.0.0.1 answering each RTSP request with ``200 OK``."""

    def __init__(self, cert: Path, key: Path) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.requests: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        try:
            with self.context.wrap_socket(conn, server_side=True) as tls:
                tls.settimeout(5)
                request = tls.recv(4096)
                self.requests.append(request)
                tls.sendall(b"RTSP/1.0 200 OK\r\nCSeq: 1\r\nPublic: OPTIONS, DESCRIBE\r\n\r\n")
                tls.recv(1)
        except (OSError, ssl.SSLError):
            pass  # the relay refused our certificate: the handshake fails here too


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    directory = tmp_path_factory.mktemp("tls")
    return {name: self_signed(directory, name) for name in ("cam.tls.test", "other.tls.test")}


@pytest.fixture
def camera(certs) -> Iterator[TlsCamera]:
    served = TlsCamera(*certs["cam.tls.test"])
    yield served
    served.sock.close()


def options_through(relay: RtspRelay) -> bytes:
    """What FFmpeg would get back for an OPTIONS sent to the relay's loopback port."""
    port = int(relay.url.split(":")[2].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"OPTIONS rtsp://127.0.0.1/x RTSP/1.0\r\nCSeq: 1\r\n\r\n")
        return client.recv(4096)


@pytest.mark.parametrize("host", ["cam.tls.test", "127.0.0.1"])
def test_a_camera_whose_certificate_is_trusted_and_matches_is_relayed(certs, camera, host):
    target = parse_url(f"rtsps://{host}:{camera.port}/x")
    with RtspRelay(target, "127.0.0.1", 5.0, tls_context(True, str(certs["cam.tls.test"][0]))) as relay:
        answer = options_through(relay)
    assert answer.startswith(b"RTSP/1.0 200 OK") and camera.requests[-1].startswith(b"OPTIONS ")


def test_an_untrusted_or_mismatched_certificate_is_refused_before_ffmpeg_starts(certs, camera):
    target = parse_url(f"rtsps://cam.tls.test:{camera.port}/x")
    cases = {"self-signed, no CA given": tls_context(),
             "another camera's CA": tls_context(True, str(certs["other.tls.test"][0]))}
    for case, context in cases.items():
        with pytest.raises(SourceRefused) as refused:
            RtspRelay(target, "127.0.0.1", 5.0, context).__enter__()
        assert refused.value.code == "camera_tls_error", case
        assert "MOVINET_RTSPS_CA_FILE" in refused.value.message and "certificate" in refused.value.message, case
    # The right CA, the wrong name: the certificate is for cam.tls.test.
    wrong_name = parse_url(f"rtsps://wrong.tls.test:{camera.port}/x")
    with pytest.raises(SourceRefused) as refused:
        RtspRelay(wrong_name, "127.0.0.1", 5.0, tls_context(True, str(certs["cam.tls.test"][0]))).__enter__()
    assert refused.value.code == "camera_tls_error" and "wrong.tls.test" in refused.value.message
    assert camera.requests == []  # no request ever reached the camera over an unchecked connection
    with RtspRelay(target, "127.0.0.1", 5.0, tls_context(verify=False)) as relay:  # the opt-out
        assert options_through(relay).startswith(b"RTSP/1.0 200 OK")


def test_a_ca_file_that_is_not_pem_is_a_settings_error(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    for value in (str(bad), str(tmp_path / "missing.pem")):
        with pytest.raises(ValueError, match="rtsps_ca_file"):
            Settings(rtsps_ca_file=value)


def test_the_session_says_why_an_untrusted_camera_is_not_pulled(plumbing_weights, camera, monkeypatch):
    monkeypatch.setattr(urls, "lookup", lambda host, port: ["127.0.0.1"])  # cam.tls.test → the camera
    with run_server(rtsp_allow_private_addresses=True) as server:
        response = httpx.post(server.http + "/sessions", timeout=30, json={
            "model": TEST_MODEL, "source": {"type": "rtsp", "url": f"rtsps://cam.tls.test:{camera.port}/x"}})
        assert response.status_code == 201, response.text
        session = response.json()
        deadline, source = time.monotonic() + 20, {}
        while time.monotonic() < deadline and not source.get("last_error"):
            status = httpx.get(f"{server.http}/sessions/{session['session_id']}", timeout=10,
                               headers={"Authorization": f"Bearer {session['token']}"}).json()
            source = status.get("source") or {}
            time.sleep(0.1)
    assert "TLS certificate was not accepted" in source.get("last_error", ""), source
    assert camera.requests == []
