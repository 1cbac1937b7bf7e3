"""``python -m pie.serve``: TCP server with concurrent clients, the client CLI, the demo."""

from __future__ import annotations

import json
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pie
import pytest
import torch
from pie import serve
from pie.models import ResNetConfig, from_config
from pie.protocol import schedule, wire
from pie.protocol.limits import MaterialEstimate
from pie.reduce.data import CIFAR100_STATS
from pie.serve.cli import _listen, _parser, _size
from serverutil import serving, serving_on
from PIL import Image

SHAPE = (3, 16, 16)
NORM = {"mean": [0.3, 0.3, 0.3], "std": [0.25, 0.25, 0.25]}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(5)
    cfg = ResNetConfig(alpha=0.125, culled=(True, False, False, False), thinned=(False, True),
                       num_classes=10, input_size=16)
    path = tmp_path_factory.mktemp("ckpt") / "model.pt"
    pie.save_checkpoint(from_config(cfg).eval(), path,
                        meta={"input_norm": NORM, "input_shape": list(SHAPE)})
    return path


@pytest.fixture(scope="module")
def server(checkpoint: Path) -> pie.Server:
    return serve.load_server(checkpoint)


@pytest.fixture()
def running(server: pie.Server):  # type: ignore[no-untyped-def]
    # Room for every client of the tests below: more would be refused as busy.
    with serving(server, serve.Limits(max_sessions=4)) as (port, _):
        yield server, port


def _query(port: int, x: np.ndarray) -> np.ndarray:
    with pie.tcp_connect("127.0.0.1", port) as ch:
        plan = serve.fetch_public_plan(ch)
        logits, _ = pie.Client(plan).infer(ch, x)
    return logits


def test_concurrent_clients_and_a_failing_one(running) -> None:  # type: ignore[no-untyped-def]
    server, port = running
    rng = np.random.default_rng(0)
    xs = [rng.random(SHAPE) for _ in range(3)]
    results: dict[int, np.ndarray] = {}

    def client(i: int) -> None:
        results[i] = _query(port, xs[i])

    # A client that vanishes mid-protocol must not disturb the others.
    rude = pie.tcp_connect("127.0.0.1", port)
    serve.fetch_public_plan(rude)
    rude.close()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for i, x in enumerate(xs):
        assert np.array_equal(results[i], server.plan.run_reference(x))


def test_client_cli_json(running, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    server, port = running
    x = np.random.default_rng(1).random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    assert serve.main(["client", "--connect", f"127.0.0.1:{port}", "--input",
                       str(tmp_path / "x.npy"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert np.array_equal(np.array(out["logits"]), server.plan.run_reference(x))
    assert out["prediction"] == int(np.argmax(out["logits"]))
    assert out["online_bytes"] > 0 and out["plan"] == server.digest


def test_inputs(tmp_path: Path) -> None:
    img = (np.random.default_rng(2).random((16, 16, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.png")
    x = serve.load_input(tmp_path / "x.png", SHAPE)
    assert x.shape == SHAPE and np.allclose(x, img.transpose(2, 0, 1) / 255.0)
    np.save(tmp_path / "bad.npy", np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="expects"):
        serve.load_input(tmp_path / "bad.npy", SHAPE)
    np.save(tmp_path / "big.npy", np.full(SHAPE, 2.0))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        serve.load_input(tmp_path / "big.npy", SHAPE)


def test_demo_runs_on_the_bundled_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert serve.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "prediction: class" in out
    assert "equals the cleartext fixed-point reference: yes" in out


def test_server_loads_a_deepreduce_checkpoint(tmp_path: Path) -> None:
    net = pie.models.build("DRD_C100_12K").eval()
    path = tmp_path / "drd.pth.tar"
    torch.save({"snet": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    server = serve.load_server(path, arch="DRD_C100_12K")
    assert server.plan.input_shape == (3, 32, 32)
    assert server.plan.relu_count() == 12_288
    # No recorded normalisation: the CIFAR-100 statistics are folded in.
    norm = (CIFAR100_STATS[0], CIFAR100_STATS[1])
    assert server.digest == pie.compile(net, (3, 32, 32), input_norm=norm).digest()


def test_clients_killed_during_offline_and_online(running) -> None:  # type: ignore[no-untyped-def]
    server, port = running
    plan_public = server.public_plan()
    # Killed during the offline phase: after the handshake and HE key set-up,
    # while the server waits for the first encrypted share.
    ch = pie.tcp_connect("127.0.0.1", port)
    serve.fetch_public_plan(ch)
    pie.Client(plan_public).session(ch)
    ch.close()
    # Killed during the online phase: offline done, masked input never sent.
    ch = pie.tcp_connect("127.0.0.1", port)
    serve.fetch_public_plan(ch)
    session = pie.Client(plan_public).session(ch)
    session.offline()
    ch.close()
    # The server goes on serving the next client correctly.
    x = np.random.default_rng(3).random(SHAPE)
    assert np.array_equal(_query(port, x), server.plan.run_reference(x))


def test_bundled_model_twenty_inputs_bit_exact() -> None:
    from importlib import resources

    with resources.as_file(resources.files("pie") / "data" / "demo_model.pt") as path:
        plan = serve.load_server(path).plan
    rng = np.random.default_rng(20)
    for _ in range(20):
        x = rng.random(plan.input_shape)
        logits, _ = pie.infer(plan, x)
        assert np.array_equal(logits, plan.run_reference(x))


# ------------------------------------------------------------------ limits


def _hold_session(port: int, plan: pie.Plan) -> tuple[pie.Channel, object]:
    """A client admitted by the server that has not started its offline phase."""
    ch = pie.tcp_connect("127.0.0.1", port)
    return ch, pie.Client(plan).session(ch)


def test_busy_server_refuses_then_serves(server: pie.Server, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(4).random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    with serving(server, serve.Limits(max_sessions=1)) as (port, log):
        ch, held = _hold_session(port, server.public_plan())
        with pie.tcp_connect("127.0.0.1", port) as other, \
                pytest.raises(wire.ServerBusyError, match="session slots"):
            serve.query(other, x)
        # The command line says so and exits with EX_TEMPFAIL.
        assert serve.main(["client", "--connect", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy")]) == 75
        assert "server busy" in capsys.readouterr().err
        held.offline()  # type: ignore[attr-defined]
        logits, _ = held.online(x)  # type: ignore[attr-defined]
        ch.close()
        assert np.array_equal(logits, server.plan.run_reference(x))
        assert log.wait_for(3, 30)
        with pie.tcp_connect("127.0.0.1", port) as again:
            assert np.array_equal(serve.query(again, x)[0], server.plan.run_reference(x))
        assert log.wait_for(4, 30)
    assert log.counts() == {"ok": 2, "refused": 2, "failed": 0}
    refused = [r for r in log.records() if r.outcome == "refused"]
    assert refused[0].error is wire.ServerBusyError and refused[0].phase == "handshake"


def test_material_limits_refuse_cleanly(server: pie.Server) -> None:
    need = MaterialEstimate.from_plan(server.plan).server_bytes
    assert need > 0
    plan = server.public_plan()
    # The total budget holds one session, not two.
    with serving(server, serve.Limits(max_total_bytes=need + need // 2)) as (port, _):
        ch, _ = _hold_session(port, plan)
        with pie.tcp_connect("127.0.0.1", port) as other, \
                pytest.raises(wire.ServerBusyError, match="would exceed"):
            serve.query(other, np.zeros(SHAPE))
        ch.close()
    # A plan over the per-session limit is refused outright.
    with serving(server, serve.Limits(max_session_bytes=need - 1)) as (port, _), \
            pie.tcp_connect("127.0.0.1", port) as ch, \
            pytest.raises(wire.ServerBusyError, match="per-session limit"):
        serve.query(ch, np.zeros(SHAPE))


def test_material_estimate_counts_labels_masks_and_tables(server: pie.Server) -> None:
    plan = server.plan
    est = MaterialEstimate.from_plan(plan)
    assert est == MaterialEstimate.from_plan(plan.public())  # public information only
    t = plan.tensors
    gc_steps = [s for s in plan.steps if s.kind in ("relu", "truncate")]
    assert est.gc_held == sum(t[s.output].numel * (16 * t[s.input].ring_bits + t[s.output].ring_bits)
                              for s in gc_steps)
    cost = plan.gc_cost()
    assert est.tables == 32 * (cost["relu_and_gates"] + cost["truncate_and_gates"])
    assert est.he_held > 0 and est.he_keys > 0 and est.he_peak > 0
    # An offline exchange holds its garbled steps' OT blocks (16 bytes per client input bit).
    assert 0 < est.exchange <= schedule.OFFLINE_EXCHANGE_BYTES + max(est.gc_peak, est.he_peak)
    assert est.exchange >= max(16 * t[s.output].numel * (t[s.input].ring_bits + t[s.output].ring_bits)
                               for s in gc_steps)
    assert est.server_bytes == (est.gc_held + est.he_held + est.he_keys + est.exchange
                                + max(est.gc_peak, est.he_peak))


def test_limits_validation() -> None:
    with pytest.raises(ValueError, match="max_sessions"):
        serve.Limits(max_sessions=0)
    with pytest.raises(ValueError, match="idle_timeout"):
        serve.Limits(idle_timeout=-1.0)
    with pytest.raises(ValueError, match="at least"):
        serve.Limits(max_sessions=8, max_connections=4)


def test_idle_session_is_dropped_and_its_slot_freed(server: pie.Server) -> None:
    x = np.random.default_rng(5).random(SHAPE)
    limits = serve.Limits(max_sessions=1, idle_timeout=2.0)
    with serving(server, limits) as (port, log):
        ch, held = _hold_session(port, server.public_plan())
        assert log.wait_for(1, 30)  # dropped after two seconds without progress
        record = log.records()[0]
        assert record.outcome == "failed" and issubclass(record.error, pie.ChannelTimeoutError)  # type: ignore[arg-type]
        assert record.phase == "idle"  # admitted, no request yet
        assert record.ended - record.started < limits.idle_timeout + 20  # generous: a shared machine
        with pytest.raises(pie.ChannelError):
            held.offline()  # type: ignore[attr-defined]
        ch.close()
        with pie.tcp_connect("127.0.0.1", port) as again:  # the slot is free again
            assert np.array_equal(serve.query(again, x)[0], server.plan.run_reference(x))


def test_silent_connection_hits_the_handshake_deadline(server: pie.Server) -> None:
    with serving(server, serve.Limits(handshake_timeout=0.5)) as (port, log):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(30)
            assert sock.recv(1) == b""  # the server hung up
        assert log.wait_for(1, 30)
    record = log.records()[0]
    assert issubclass(record.error, pie.ChannelTimeoutError) and record.phase == "plan"  # type: ignore[arg-type]


def _threads_and_fds() -> tuple[int, int, int]:
    return (threading.active_count(), len(os.listdir("/proc/self/task")),
            len(os.listdir("/proc/self/fd")))


def test_failing_connections_leak_no_threads_sockets_or_material(server: pie.Server) -> None:
    plan = server.public_plan()
    x = np.random.default_rng(9).random(SHAPE)
    wrong = json.dumps({"protocol": wire.PROTOCOL_VERSION, "plan": "0" * 64}).encode()

    def vanish_after_handshake() -> None:
        ch, _ = _hold_session(port, plan)
        ch.close()

    def vanish_after_offline() -> None:
        ch, session = _hold_session(port, plan)
        session.offline()  # type: ignore[attr-defined]
        ch.close()

    def silent() -> None:
        with socket.create_connection(("127.0.0.1", port)) as sock:
            sock.settimeout(30)
            sock.recv(1)  # returns when the server hangs up

    failures = [
        lambda: _raw(port, os.urandom(100)),
        lambda: _raw(port, b""),
        lambda: _raw(port, _frame(wire.GET_PLAN, b"{}")),
        lambda: _raw(port, _frame(wire.HELLO, wrong)),
        lambda: _raw(port, _frame(wire.HELLO, b"", length=1 << 62)),
        vanish_after_handshake,
        vanish_after_offline,
        silent,
    ]
    # Four slots: sessions whose slot or material were not given back would
    # make the last query busy.
    limits = serve.Limits(max_sessions=4, handshake_timeout=1.0, idle_timeout=1.0)
    with serving(server, limits) as (port, log):
        with pie.tcp_connect("127.0.0.1", port) as ch:  # warm-up: thread pools, caches
            serve.query(ch, x)
        assert log.wait_for(1, 30)
        time.sleep(0.5)
        baseline = _threads_and_fds()
        rounds = 2
        for _ in range(rounds):
            for fail in failures:
                fail()
        assert log.wait_for(1 + rounds * len(failures), 60)
        deadline = time.monotonic() + 30
        while _threads_and_fds() != baseline and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _threads_and_fds() == baseline
        counts = log.counts()
        assert counts["failed"] == rounds * len(failures) and counts["ok"] == 1
        with pie.tcp_connect("127.0.0.1", port) as ch:
            assert np.array_equal(serve.query(ch, x)[0], server.plan.run_reference(x))


def test_trickling_client_cannot_stretch_the_handshake_deadline(server: pie.Server) -> None:
    """One byte every 0.3 s never trips a per-read timeout of 1 s, but the
    connection's whole handshake has 1 s."""
    request = _frame(wire.GET_PLAN, b"{}")
    with serving(server, serve.Limits(handshake_timeout=1.0)) as (port, log):
        with socket.create_connection(("127.0.0.1", port)) as sock:
            for byte in request:
                try:
                    sock.sendall(bytes([byte]))
                except ConnectionError:
                    break
                time.sleep(0.3)
        assert log.wait_for(1, 30)
    record = log.records()[0]
    assert issubclass(record.error, pie.ChannelTimeoutError) and record.phase == "plan"  # type: ignore[arg-type]
    assert record.ended - record.started < 0.3 * len(request)  # cut short, not stretched


# --------------------------------------------------------- wire hardening


def _raw(port: int, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection and return what the server answers
    until it hangs up (a server that hangs up on unread bytes resets the
    connection: that ends the exchange too)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(30)
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)  # nothing more will come: the server sees it at once
            while chunk := sock.recv(1 << 16):
                reply += chunk
        except ConnectionError:  # reset, or a broken pipe while still sending
            pass
    return reply


def _frame(kind: int, payload: bytes, length: int | None = None) -> bytes:
    return struct.pack("<IQ", kind, len(payload) if length is None else length) + payload


def test_unexpected_and_oversize_messages_end_only_their_connection(server: pie.Server) -> None:
    hello = json.dumps({"protocol": wire.PROTOCOL_VERSION, "plan": server.digest}).encode()
    bad = [
        (_frame(wire.MASKED_INPUT, b"\0" * 8), pie.ProtocolError, "plan"),  # out of order
        (_frame(wire.HELLO, b"", length=1 << 40), pie.OversizeMessageError, "plan"),
        (_frame(wire.HELLO, b"{not json"), wire.MalformedMessageError, "handshake"),
        (_frame(wire.GET_PLAN, b"{}") + _frame(wire.GET_PLAN, b"{}"), pie.ProtocolError, "handshake"),
        (_frame(wire.HELLO, hello) + _frame(wire.FINISH, b"\0" * 64), pie.ProtocolError, "idle"),
        (os.urandom(64), pie.ChannelError, "plan"),
    ]
    x = np.random.default_rng(6).random(SHAPE)
    with serving(server, serve.Limits(handshake_timeout=5.0, idle_timeout=5.0)) as (port, log):
        for data, _, _ in bad:
            _raw(port, data)
        assert log.wait_for(len(bad), 60)
        with pie.tcp_connect("127.0.0.1", port) as ch:
            assert np.array_equal(serve.query(ch, x)[0], server.plan.run_reference(x))
    records = sorted(log.records(), key=lambda r: r.number)
    for (_, error, phase), record in zip(bad, records):
        assert record.outcome == "failed"
        assert issubclass(record.error, error), (record.error, record.message)  # type: ignore[arg-type]
        assert record.phase == phase
    assert records[0].message.startswith("server, phase plan: expected HELLO or GET_PLAN")
    assert "announces 1099511627776 bytes" in records[1].message
    assert "phase handshake" in records[3].message
    assert log.counts()["ok"] == 1


def test_refusal_and_version_mismatch_reach_the_client(server: pie.Server) -> None:
    s_end, c_end = pie.memory_pair()
    result: list[BaseException] = []

    def serve_one() -> None:
        conv = wire.Conversation(s_end, "server")
        try:
            conv.server_handshake(server.digest)
        except wire.HandshakeError as exc:
            result.append(exc)

    worker = threading.Thread(target=serve_one)
    worker.start()
    conv = wire.Conversation(c_end, "client")
    c_end.send_frame(wire.HELLO, json.dumps({"protocol": 1, "plan": server.digest}).encode())
    conv.phase = wire.Phase.HANDSHAKE
    _, payload = conv._recv({wire.WELCOME: wire.MAX_CONTROL_BYTES})
    worker.join(30)
    reply = json.loads(payload)
    assert reply["ok"] is False and reply["busy"] is False and "protocol version 1" in reply["error"]
    assert isinstance(result[0], wire.HandshakeError) and not isinstance(result[0], wire.ServerBusyError)


def test_conversation_refuses_calls_out_of_order() -> None:
    a, _ = pie.memory_pair()
    conv = wire.Conversation(a, "client")
    with pytest.raises(RuntimeError, match="phase plan"):
        conv.client_output(8)
    with pytest.raises(RuntimeError, match="server method"):
        conv.server_offline_check()
    with pytest.raises(ValueError, match="role"):
        wire.Conversation(a, "observer")


# ----------------------------------------------------------- integrity


def _sealed(channel: pie.Channel, kind: int, body: bytes, *, stale: bool = False) -> None:
    """A sealed frame as the protocol writes it; ``stale`` takes the digests
    before the frame, as if its bytes had changed on the way."""
    before = channel.transcript()
    channel.send(struct.pack("<IQ", kind, len(body) + 32))
    channel.send(body)
    sent, received = before if stale else channel.transcript()
    channel.send(sent + received)
    channel.flush()


@pytest.mark.parametrize("fault", ["none", "server-to-client", "client-to-server"])
def test_sealed_output_share_detects_either_direction(fault: str) -> None:
    share = bytes(range(40))
    server_end, client_end = pie.memory_pair()
    conv = wire.Conversation(client_end, "client")
    conv.phase = wire.Phase.ONLINE
    if fault == "client-to-server":
        client_end.send(b"?")  # never read by the server: its received digest differs
        client_end.flush()
    # The share, then the server's next offer (sealed with it).
    _sealed(server_end, wire.OUTPUT_SHARE, share + struct.pack("<I", 2), stale=fault == "server-to-client")
    if fault == "none":
        assert conv.client_output(len(share)) == share
        assert conv.phase is wire.Phase.IDLE and conv.offer == 2  # ready for the next query
        # FINISH carries the client's digests, matching the server's view.
        header = server_end.recv(12)
        assert struct.unpack("<IQ", header) == (wire.FINISH, 32)
        mine = server_end.transcript()
        assert server_end.recv(32) == mine[1] + mine[0]
        return
    which = "received" if fault == "server-to-client" else "sent"
    with pytest.raises(wire.TranscriptError, match=f"client {which} differ"):
        conv.client_output(len(share))
    assert conv.failed and conv.phase is wire.Phase.ONLINE
    with pytest.raises(pie.ProtocolError, match="failed earlier"):
        conv.client_output(len(share))


def test_verified_output_survives_a_server_gone_before_finish() -> None:
    share = bytes(range(16))
    server_end, client_end = pie.memory_pair()
    conv = wire.Conversation(client_end, "client")
    conv.phase = wire.Phase.ONLINE
    _sealed(server_end, wire.OUTPUT_SHARE, share + struct.pack("<I", 0))
    server_end.close()  # sending FINISH fails: the checked share still counts
    assert conv.client_output(len(share)) == share
    assert conv.phase is wire.Phase.DONE


def test_whole_session_over_tcp_checks_both_transcripts(server: pie.Server) -> None:
    """A normal session ends with both ends in phase done (OFFLINE_DONE,
    OFFLINE_VERDICT, OUTPUT_SHARE and FINISH all checked, then BYE)."""
    x = np.random.default_rng(8).random(SHAPE)
    with serving(server, serve.Limits()) as (port, log):
        with pie.tcp_connect("127.0.0.1", port) as ch:
            logits, _, plan = serve.query(ch, x)
        assert log.wait_for(1, 30)
    assert plan.digest() == server.digest
    assert np.array_equal(logits, server.plan.run_reference(x))
    record = log.records()[0]
    assert record.outcome == "ok" and record.phase == "done" and record.error is None


def test_cli_sizes() -> None:
    assert _size("512M") == 512 << 20
    assert _size("4GiB") == 4 << 30
    assert _size("1.5k") == 1536
    assert _size("1000") == 1000
    for bad in ("lots", "-1G", "0"):
        with pytest.raises(Exception, match="size"):
            _size(bad)


# -------------------------------------------------------------------- TLS


def _pem_key(path: Path, key: object) -> str:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,  # type: ignore[attr-defined]
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return str(path)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    d = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pie test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    files = {"ca": str(d / "ca.pem")}
    (d / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who, usage in (("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)):
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, who)]))
                   .issuer_name(ca_name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=30))
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if who == "server":
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        (d / f"{who}.crt").write_bytes(builder.sign(ca_key, hashes.SHA256()).public_bytes(
            serialization.Encoding.PEM))
        files[f"{who}_cert"] = str(d / f"{who}.crt")
        files[f"{who}_key"] = _pem_key(d / f"{who}.key", key)
    return files


def serving_cli_listener(server: pie.Server, argv: list[str]) -> Iterator[tuple[int, serve.SessionLog]]:
    """``serve_forever`` on the listener the server command line builds from ``argv``."""
    args = _parser().parse_args(["server", "--model", "unused.pt", "--port", "0", *argv])
    return serving_on(server, _listen(args), serve.Limits())


def test_tls_inference_through_both_command_lines(server: pie.Server, pki: dict[str, str], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(10).random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    tls_server = ["--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"]]
    with serving_cli_listener(server, tls_server) as (port, log):
        client = ["client", "--connect", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy"), "--json"]
        assert serve.main([*client, "--tls-ca", pki["ca"]]) == 0
        out = json.loads(capsys.readouterr().out)
        assert np.array_equal(np.array(out["logits"]), server.plan.run_reference(x))
        # A plain-TCP client is not understood by a TLS server: a typed error, nothing else.
        assert serve.main([*client, "--io-timeout", "10"]) == 1
        assert "error: " in capsys.readouterr().err
        assert log.wait_for(2, 30)
    outcomes = sorted((r.outcome, r.error) for r in log.records())
    assert outcomes[1][0] == "ok" and outcomes[0][0] == "failed"
    assert issubclass(outcomes[0][1], pie.ChannelError)  # type: ignore[arg-type]


def test_mutual_tls_refuses_clients_without_a_certificate(server: pie.Server, pki: dict[str, str],
                                                          tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    x = np.random.default_rng(11).random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    mutual = ["--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--tls-client-ca", pki["ca"]]
    with serving_cli_listener(server, mutual) as (port, log):
        client = ["client", "--connect", f"127.0.0.1:{port}", "--input", str(tmp_path / "x.npy"),
                  "--json", "--tls-ca", pki["ca"]]
        assert serve.main(client) == 1
        # The server's alert, or a reset if it hangs up before reading the
        # client's first bytes (TLS 1.3 judges the client's certificate late).
        err = capsys.readouterr().err
        assert "TlsError" in err or "PeerClosedError" in err, err
        assert serve.main([*client, "--tls-cert", pki["client_cert"], "--tls-key", pki["client_key"]]) == 0
        out = json.loads(capsys.readouterr().out)
        assert np.array_equal(np.array(out["logits"]), server.plan.run_reference(x))
        assert log.wait_for(2, 30)
    failed = [r for r in log.records() if r.outcome == "failed"]
    assert len(failed) == 1 and issubclass(failed[0].error, pie.TlsError)  # type: ignore[arg-type]


@pytest.mark.slow
def test_server_command_line_over_tls(checkpoint: Path, server: pie.Server, pki: dict[str, str],
                                     tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``python -m pie.serve server`` as a process: banner, TLS, limits, Ctrl-C."""
    import re
    import signal
    import subprocess
    import sys

    x = np.random.default_rng(12).random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    argv = [sys.executable, "-m", "pie.serve", "server", "--model", str(checkpoint), "--port", "0",
            "--tls-cert", pki["server_cert"], "--tls-key", pki["server_key"], "--max-sessions", "2",
            "--idle-timeout", "30", "--max-total-memory", "2G", "--threads", "1"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as proc:
        try:
            assert proc.stdout is not None
            banner = proc.stdout.readline()
            found = re.search(r"on 127\.0\.0\.1:(\d+) over TLS; [\d.]+ MiB of offline material per "
                              r"session, at most 2 sessions", banner)
            assert found, banner
            assert serve.main(["client", "--connect", f"127.0.0.1:{found.group(1)}", "--input",
                               str(tmp_path / "x.npy"), "--json", "--tls-ca", pki["ca"]]) == 0
            out = json.loads(capsys.readouterr().out)
            assert np.array_equal(np.array(out["logits"]), server.plan.run_reference(x))
            proc.send_signal(signal.SIGINT)
            assert proc.wait(60) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_cli_argument_checks(checkpoint: Path, pki: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["client", "--connect", "nowhere", "--input", "x.npy"], "HOST:PORT"),
        (["client", "--connect", "h:1", "--input", "x.npy", "--tls-cert", "c.pem"], "go together"),
        (["client", "--connect", "h:1", "--input", "x.npy", "--tls-server-name", "n"], "need --tls-ca"),
        (["server", "--model", str(checkpoint), "--tls-cert", "c.pem"], "go together"),
        (["server", "--model", str(checkpoint), "--tls-client-ca", "ca.pem"], "needs --tls-cert"),
        (["server", "--model", str(checkpoint), "--max-sessions", "0"], "positive"),
        (["server", "--model", str(checkpoint), "--max-session-memory", "1K"], "max-session-memory"),
        (["server", "--model", str(checkpoint), "--port", "0", "--tls-cert", pki["server_cert"],
          "--tls-key", pki["client_cert"]], "cannot listen"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            serve.main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err, argv


def test_server_compiles_with_a_calibration_file_or_the_stored_sample(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo = Path(str(resources.files("pie") / "data" / "demo_model.pt"))
    images = np.random.default_rng(3).integers(0, 256, size=(6, *SHAPE), dtype=np.uint8)
    np.savez(tmp_path / "cal.npz", images)
    from_file = serve.load_model(demo, calibration=tmp_path / "cal.npz")
    assert from_file.plan.policy["calibration"] == "6 images supplied at compile time"
    assert np.array_equal(from_file.calibration, images / 255.0)
    stored = tmp_path / "with_sample.pt"
    pie.save_checkpoint(from_file.net, stored, meta=pie.checkpoint_meta(demo), calibration=images[:4])
    server = serve.load_server(stored)
    assert server.plan.policy["calibration"] == "4 images supplied at compile time"
    # A bad file stops the server command before it listens.
    np.savez(tmp_path / "bad.npz", images=np.full((2, *SHAPE), 2.0))
    for path, message in [(tmp_path / "bad.npz", "[0, 1]"), (tmp_path / "none.npz", "does not exist")]:
        with pytest.raises(SystemExit) as exit_info:
            serve.main(["server", "--model", str(demo), "--port", "0", "--calibration", str(path)])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert "error: " in err and message in err


# --------------------------------------------------- many queries, pools


def test_client_cli_many_inputs_and_a_folder(running, tmp_path: Path,  # type: ignore[no-untyped-def]
                                             capsys: pytest.CaptureFixture[str]) -> None:
    server, port = running
    rng = np.random.default_rng(11)
    folder = tmp_path / "images"
    folder.mkdir()
    pngs = []
    for name in ("b.png", "a.png"):
        Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)).save(folder / name)
        pngs.append(folder / name)
    (folder / "notes.txt").write_text("not an input")
    x = rng.random(SHAPE)
    np.save(tmp_path / "x.npy", x)
    expected = {str(folder / "a.png"): serve.load_input(folder / "a.png", SHAPE),
                str(folder / "b.png"): serve.load_input(folder / "b.png", SHAPE),
                str(tmp_path / "x.npy"): x}
    for extra in ([], ["--prepare", "3"], ["--batch", "2"]):
        args = ["client", "--connect", f"127.0.0.1:{port}", "--input", str(folder),
                str(tmp_path / "x.npy"), "--json", *extra]
        assert serve.main(args) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert [line["input"] for line in lines] == sorted(expected)[:2] + [str(tmp_path / "x.npy")]
        for line in lines:
            assert np.array_equal(np.array(line["logits"]), server.plan.run_reference(expected[line["input"]]))
            assert line["offline_seconds"] > 0 and line["online_seconds"] > 0
        assert [line["batch"] for line in lines] == ([2, 2, 1] if "--batch" in extra else [1, 1, 1])
    # The tables: one line per image, then the total.
    assert serve.main(["client", "--connect", f"127.0.0.1:{port}", "--input", *map(str, pngs)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{pngs[0]}: class ") and "offline" in out[0] and "online" in out[0]
    assert out[-1].startswith("2 images in")


def test_pool_refuses_past_its_memory_limit_without_harming_others(server: pie.Server) -> None:
    est = MaterialEstimate.from_plan(server.plan)
    plan = server.public_plan()
    rng = np.random.default_rng(12)
    # Two sessions fit, with half a set to spare: a second set for either is refused.
    limits = serve.Limits(max_sessions=4, max_total_bytes=2 * est.server_bytes + est.set_bytes // 2, pool=0)
    with serving(server, limits) as (port, log):
        a_ch, a = _hold_session(port, plan)
        b_ch, b = _hold_session(port, plan)
        with pytest.raises(wire.ServerBusyError, match="would exceed"):
            a.prepare(2)  # type: ignore[attr-defined]
        assert a.prepared == 0  # type: ignore[attr-defined]  # all or nothing
        for session in (a, b):  # both go on unharmed
            x = rng.random(SHAPE)
            session.prepare(1)  # type: ignore[attr-defined]
            assert np.array_equal(session.online(x)[0], server.plan.run_reference(x))  # type: ignore[attr-defined]
        b.prepare(1)  # type: ignore[attr-defined]
        b_ch.close()  # b vanishes with a prepared set left: the server drops it
        assert log.wait_for(1, 30)
        a.prepare(2)  # type: ignore[attr-defined]  # b's share is free again
        for _ in range(2):
            x = rng.random(SHAPE)
            assert np.array_equal(a.online(x)[0], server.plan.run_reference(x))  # type: ignore[attr-defined]
        a.close()  # type: ignore[attr-defined]
        a_ch.close()
        assert log.wait_for(2, 30)
    assert log.counts() == {"ok": 2, "refused": 0, "failed": 0}
    # The per-session limit bounds one session's pool, and the server's offer with it.
    limits = serve.Limits(max_session_bytes=est.server_bytes + est.set_bytes, pool=3)
    with serving(server, limits) as (port, _):
        ch, held = _hold_session(port, plan)
        assert held.offer == 2  # type: ignore[attr-defined]
        with pytest.raises(wire.ServerBusyError, match="per-session limit"):
            held.prepare(3)  # type: ignore[attr-defined]
        held.prepare(2)  # type: ignore[attr-defined]
        assert held.offer == 0  # type: ignore[attr-defined]
        held.close()  # type: ignore[attr-defined]
        ch.close()
