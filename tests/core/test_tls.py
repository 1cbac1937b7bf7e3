"""TLS channels: verification (CA, host name, expiry, client certificates),
round trips, counters, transcripts, and typed errors for hostile peers.

Certificates are made here with the `cryptography` package, so the oracle for
what is valid does not share code with pie's OpenSSL calls.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pie
import pytest
from chanutil import (SIZES_AB, SIZES_BA, Pair, Runner, exchange, large_message_intact, peer_closed_mid_message,
                      transcript_check)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pie import crypto

NOW = datetime.datetime.now(datetime.timezone.utc)


@dataclass(frozen=True)
class Identity:
    cert: str
    key: str


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> str:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return str(path)


def _write_cert(path: Path, cert: x509.Certificate) -> str:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(path)


class Ca:
    def __init__(self, directory: Path, name: str) -> None:
        self.dir = directory
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.key = _key()
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(self.name)
            .issuer_name(self.name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(days=1))
            .not_valid_after(NOW + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.key, hashes.SHA256())
        )
        self.file = _write_cert(directory / f"{name}.pem", self.cert)

    def issue(
        self,
        stem: str,
        *,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        client: bool = False,
        expired: bool = False,
    ) -> Identity:
        key = _key()
        start, end = (
            (NOW - datetime.timedelta(days=10), NOW - datetime.timedelta(days=1))
            if expired
            else (NOW - datetime.timedelta(days=1), NOW + datetime.timedelta(days=30))
        )
        names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, stem)]))
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Identity(
            _write_cert(self.dir / f"{stem}.crt", cert), _write_key(self.dir / f"{stem}.key", key)
        )


@dataclass(frozen=True)
class Pki:
    ca: Ca
    other_ca: Ca
    server: Identity
    client: Identity
    rogue_client: Identity
    expired_server: Identity
    other_host_server: Identity


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca, other = Ca(d, "ca"), Ca(d, "other-ca")
    return Pki(
        ca=ca,
        other_ca=other,
        server=ca.issue("server", dns=("localhost",), ips=("127.0.0.1",)),
        client=ca.issue("client", client=True),
        rogue_client=other.issue("rogue-client", client=True),
        expired_server=ca.issue("expired", dns=("localhost",), ips=("127.0.0.1",), expired=True),
        other_host_server=ca.issue("elsewhere", dns=("elsewhere.example",)),
    )


def accept_and_handshake(listener: pie.TlsListener) -> pie.Channel:
    """The server's handshake runs on its first I/O; recv(0) is such an I/O."""
    ch = listener.accept(timeout=10.0)
    ch.recv(0)
    return ch


def tls_pair(pki: Pki, *, client_ca: bool = False) -> Pair:
    with pie.TlsListener(
        "127.0.0.1", 0, cert=pki.server.cert, key=pki.server.key,
        client_ca=pki.ca.file if client_ca else None,
    ) as listener:
        server = Runner(lambda: accept_and_handshake(listener))
        client = pie.tls_connect(
            "127.0.0.1", listener.port, ca=pki.ca.file,
            cert=pki.client.cert if client_ca else None,
            key=pki.client.key if client_ca else None,
            timeout=10.0,
        )
        srv = server.join()
    assert isinstance(srv, pie.Channel)
    return client, srv


@pytest.fixture
def pair(pki: Pki) -> Iterator[Pair]:
    a, b = tls_pair(pki)
    yield a, b
    a.close()
    b.close()


# ------------------------------------------------------------ working channels


@pytest.mark.parametrize("mutual", [False, True], ids=["server-auth", "mutual-auth"])
def test_round_trip_counters_and_transcripts(pki: Pki, mutual: bool) -> None:
    a, b = tls_pair(pki, client_ca=mutual)
    payload_ab, _ = exchange(a, b, end=lambda ch: ch.send_frame(5, b"done"))
    assert a.recv_frame(5, max_bytes=4) == b"done"
    # Counters and transcripts see the application stream, not TLS records.
    assert a.bytes_sent == b.bytes_received == sum(SIZES_AB)
    assert b.bytes_sent == a.bytes_received == sum(SIZES_BA) + 12 + 4
    stream_ab = b"".join(payload_ab)
    assert a.transcript()[0] == b.transcript()[1] == transcript_check(stream_ab)
    assert b.transcript()[0] == a.transcript()[1]
    a.close()
    b.close()


def test_an_emulated_link_over_tls_keeps_the_stream_and_counters(pki: Pki) -> None:
    link = pie.Link(bandwidth=1e9, rtt=2e-3)
    client, server = tls_pair(pki)
    a, b = link.wrap(client, "client"), link.wrap(server, "server")
    payload = crypto.secure_random(1 << 20)

    def side_b() -> bytes:
        got = b.recv(len(payload))
        b.send_frame(5, got[:8])
        return got

    peer = Runner(side_b)
    a.send(payload)
    assert a.recv_frame(5, max_bytes=8) == payload[:8]
    assert peer.join() == payload
    assert a.bytes_sent == b.bytes_received == len(payload)
    assert (a.flushes, a.round_trips) == (1, 1)
    assert a.transcript()[0] == b.transcript()[1]
    a.close()
    b.close()


def test_64_mib_message_intact(pair: Pair) -> None:
    a, b = pair
    large_message_intact(a, b, 64 << 20)
    assert a.transcript()[0] == b.transcript()[1]


def test_localhost_name_and_explicit_server_name(pki: Pki) -> None:
    with pie.TlsListener("127.0.0.1", 0, cert=pki.other_host_server.cert,
                         key=pki.other_host_server.key) as listener:
        server = Runner(lambda: listener.accept(timeout=10.0).recv(2))
        ch = pie.tls_connect("127.0.0.1", listener.port, ca=pki.ca.file,
                             server_name="elsewhere.example")
        ch.send(b"ok")
        ch.flush()
        assert server.join() == b"ok"
        ch.close()
    with pie.TlsListener("localhost", 0, cert=pki.server.cert, key=pki.server.key) as listener:
        server = Runner(lambda: listener.accept(timeout=10.0).recv(2))
        ch = pie.tls_connect("localhost", listener.port, ca=pki.ca.file)
        ch.send(b"ok")
        ch.flush()
        assert server.join() == b"ok"
        ch.close()


def test_orderly_close_and_peer_closed(pair: Pair) -> None:
    a, b = pair
    peer_closed_mid_message(a, b)


def test_recv_deadline(pair: Pair) -> None:
    _, b = pair
    b.timeout = 0.2
    with pytest.raises(pie.ChannelTimeoutError):
        b.recv(1)


# ------------------------------------------------------------ refused peers


def _server_outcome(listener: pie.TlsListener) -> Runner:
    """Accepts one connection and reads from it; the Runner holds what happened."""

    def serve() -> bytes:
        ch = listener.accept(timeout=10.0)
        ch.timeout = 10.0
        try:
            return ch.recv(1)
        finally:
            ch.close()

    return Runner(serve)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong-ca", "certificate verify failed"),
        ("wrong-host", "hostname mismatch|IP address mismatch"),
        ("expired", "expired"),
    ],
)
def test_client_refuses_bad_server_certificate(pki: Pki, case: str, reason: str) -> None:
    ca = pki.other_ca.file if case == "wrong-ca" else pki.ca.file
    server = pki.expired_server if case == "expired" else pki.server
    name = "elsewhere.example" if case == "wrong-host" else None
    with pie.TlsListener("127.0.0.1", 0, cert=server.cert, key=server.key) as listener:
        outcome = _server_outcome(listener)
        with pytest.raises(pie.TlsError, match=reason) as info:
            pie.tls_connect("127.0.0.1", listener.port, ca=ca, server_name=name, timeout=10.0)
        assert isinstance(info.value, pie.ChannelError)
        # The server learns of the refusal through the client's alert.
        with pytest.raises(pie.TlsError):
            outcome.join()


def test_wrong_ip_refused(pki: Pki) -> None:
    with pie.TlsListener("127.0.0.1", 0, cert=pki.other_host_server.cert,
                         key=pki.other_host_server.key) as listener:
        outcome = _server_outcome(listener)
        with pytest.raises(pie.TlsError, match="IP address mismatch"):
            pie.tls_connect("127.0.0.1", listener.port, ca=pki.ca.file, timeout=10.0)
        with pytest.raises(pie.TlsError):
            outcome.join()


@pytest.mark.parametrize("client", ["none", "rogue"])
def test_server_requiring_client_certificate_refuses(pki: Pki, client: str) -> None:
    with pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=pki.server.key,
                         client_ca=pki.ca.file) as listener:
        outcome = _server_outcome(listener)
        ident = pki.rogue_client if client == "rogue" else None
        # TLS 1.3: the client's side of the handshake ends before the server
        # judges its certificate, so the refusal arrives on the first read.
        with pytest.raises(pie.TlsError, match="alert"):
            ch = pie.tls_connect(
                "127.0.0.1", listener.port, ca=pki.ca.file,
                cert=ident.cert if ident else None, key=ident.key if ident else None,
                timeout=10.0,
            )
            ch.timeout = 10.0
            ch.recv(1)
        with pytest.raises(pie.TlsError, match="certificate"):
            outcome.join()


def test_plain_tcp_client_gets_typed_errors_and_listener_keeps_serving(pki: Pki) -> None:
    with pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=pki.server.key) as listener:
        outcome = _server_outcome(listener)
        plain = pie.tcp_connect("127.0.0.1", listener.port, timeout=5.0)
        plain.timeout = 10.0
        plain.send_frame(1, b"hello, are you pie?")
        with pytest.raises(pie.ChannelError):  # an alert then EOF: not a frame of type 1
            plain.recv_frame(1, max_bytes=1 << 20)
        with pytest.raises(pie.TlsError):
            outcome.join()
        plain.close()
        # The same listener then serves a real TLS client.
        served = Runner(lambda: listener.accept(timeout=10.0).recv(5))
        good = pie.tls_connect("127.0.0.1", listener.port, ca=pki.ca.file, timeout=10.0)
        good.send(b"hello")
        good.flush()
        assert served.join() == b"hello"
        good.close()


def test_tls_client_against_plain_tcp_server(pki: Pki) -> None:
    with pie.TcpListener("127.0.0.1", 0) as listener:

        def answer_garbage() -> None:
            ch = listener.accept(timeout=10.0)
            ch.send(b"HTTP/1.0 400 not TLS\r\n\r\n" * 4)
            ch.flush()
            time.sleep(0.5)
            ch.close()

        server = Runner(answer_garbage)
        with pytest.raises(pie.TlsError):
            pie.tls_connect("127.0.0.1", listener.port, ca=pki.ca.file, timeout=10.0)
        server.join()


def test_handshake_deadline_against_silent_server(pki: Pki) -> None:
    with pie.TcpListener("127.0.0.1", 0) as listener:
        start = time.monotonic()
        with pytest.raises(pie.ChannelTimeoutError):
            pie.tls_connect("127.0.0.1", listener.port, ca=pki.ca.file, timeout=0.5)
        assert time.monotonic() - start < 5.0


def test_server_handshake_deadline_against_silent_client(pki: Pki) -> None:
    with pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=pki.server.key) as listener:
        silent = pie.tcp_connect("127.0.0.1", listener.port, timeout=5.0)
        ch = listener.accept(timeout=5.0)  # returns at once: the handshake is lazy
        ch.timeout = 0.3
        with pytest.raises(pie.ChannelTimeoutError, match="handshake"):
            ch.recv(1)
        ch.close()
        silent.close()


class CorruptingProxy:
    """Forwards TCP both ways; once `armed`, flips one bit in the next chunk
    travelling client -> server."""

    def __init__(self, target_port: int) -> None:
        self.listen = socket.create_server(("127.0.0.1", 0))
        self.port = self.listen.getsockname()[1]
        self.target_port = target_port
        self.armed = threading.Event()
        self.corrupted = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _pump(self, src: socket.socket, dst: socket.socket, corrupt: bool) -> None:
        try:
            while data := src.recv(1 << 16):
                if corrupt and self.armed.is_set() and not self.corrupted.is_set():
                    buf = bytearray(data)
                    buf[len(buf) // 2] ^= 0x10
                    data = bytes(buf)
                    self.corrupted.set()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def _run(self) -> None:
        client, _ = self.listen.accept()
        server = socket.create_connection(("127.0.0.1", self.target_port))
        pumps = [
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True),
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True),
        ]
        for p in pumps:
            p.start()
        for p in pumps:
            p.join()
        client.close()
        server.close()
        self.listen.close()


def test_corrupted_record_is_a_typed_error(pki: Pki) -> None:
    with pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=pki.server.key) as listener:
        proxy = CorruptingProxy(listener.port)
        server = Runner(lambda: accept_and_handshake(listener))
        client = pie.tls_connect("127.0.0.1", proxy.port, ca=pki.ca.file, timeout=10.0)
        srv = server.join()
        assert isinstance(srv, pie.Channel)
        srv.timeout = 10.0
        client.send(b"ping")
        client.flush()
        assert srv.recv(4) == b"ping"  # handshake done, stream healthy
        proxy.armed.set()
        client.send(crypto.secure_random(1000))
        client.flush()
        with pytest.raises(pie.TlsError, match="decrypt|bad record mac"):
            srv.recv(1000)
        assert proxy.corrupted.is_set()
        client.close()
        srv.close()


# ------------------------------------------------------------ configuration


def test_bad_files_and_arguments(pki: Pki, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(pie.TlsError, match="certificate chain"):
        pie.TlsListener("127.0.0.1", 0, cert=missing, key=pki.server.key)
    with pytest.raises(pie.TlsError, match="mismatch|does not match"):
        pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=pki.client.key)
    with pytest.raises(pie.TlsError, match="CA file"):
        pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=pki.server.key,
                        client_ca=missing)
    with pytest.raises(pie.TlsError, match="CA file"):
        pie.tls_connect("127.0.0.1", 1, ca=missing)
    with pytest.raises(ValueError, match="private key"):
        pie.tls_connect("127.0.0.1", 1, ca=pki.ca.file, cert=pki.client.cert)
    with pytest.raises(TypeError):
        pie.tls_connect("127.0.0.1", 1, pki.ca.file)  # type: ignore[misc]
    # An encrypted key is refused, never prompted for.
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        serialization.load_pem_private_key(Path(pki.server.key).read_bytes(), None).private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(pie.TlsError, match="private key"):
        pie.TlsListener("127.0.0.1", 0, cert=pki.server.cert, key=str(encrypted))
