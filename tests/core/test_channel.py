"""Channels: exact counters, large messages, peers that vanish, deadlines, frames."""

from __future__ import annotations

import time

import pie
import pytest
from chanutil import SIZES_AB, SIZES_BA, Pair, Runner, exchange, large_message_intact, peer_closed_mid_message
from hypothesis import given
from hypothesis import strategies as st


def test_exact_counters_both_directions(pair: Pair) -> None:
    a, b = pair
    exchange(a, b)
    assert a.bytes_sent == b.bytes_received == sum(SIZES_AB)
    assert b.bytes_sent == a.bytes_received == sum(SIZES_BA)


@given(chunks=st.lists(st.integers(0, 5000), max_size=20))
def test_counters_property(chunks: list[int]) -> None:
    a, b = pie.memory_pair()
    for n in chunks:
        a.send(bytes(n))
    a.flush()
    for n in chunks:
        assert b.recv(n) == bytes(n)
    assert a.bytes_sent == b.bytes_received == sum(chunks)
    assert a.flushes == (1 if sum(chunks) else 0)


def test_flush_counts_only_nonempty_pushes() -> None:
    a, b = pie.memory_pair()
    a.flush()
    a.send(b"x")
    a.flush()
    a.send(b"y")
    b.recv(1)
    a.recv_into(bytearray(0))  # recv flushes pending output first
    assert b.recv(1) == b"y"
    assert a.flushes == 2
    a.reset_stats()
    assert (a.bytes_sent, a.bytes_received, a.flushes) == (0, 0, 0)


def test_100_mib_message_intact(pair: Pair) -> None:
    a, b = pair
    n = 100 << 20
    large_message_intact(a, b, n)
    assert a.bytes_sent == b.bytes_received == n


def test_recv_into_numpy_buffer(pair: Pair) -> None:
    np = pytest.importorskip("numpy")
    a, b = pair
    src = np.arange(1000, dtype=np.uint64)
    a.send(src)
    a.flush()
    dst = np.zeros(1000, dtype=np.uint64)
    b.recv_into(dst)
    assert (dst == src).all()
    with pytest.raises(TypeError):
        b.recv_into(b"immutable")


def test_peer_closing_mid_message_raises(pair: Pair) -> None:
    a, b = pair
    peer_closed_mid_message(a, b)


def test_peer_closing_while_reader_waits(pair: Pair) -> None:
    a, b = pair
    waiting = Runner(lambda: b.recv(10))
    time.sleep(0.2)  # let the reader block (with the GIL released)
    a.send(b"12345")
    a.close()
    with pytest.raises(pie.PeerClosedError):
        waiting.join()


def test_send_after_close_raises(pair: Pair) -> None:
    a, _ = pair
    a.close()
    with pytest.raises(pie.ChannelError):
        a.send(b"x" * (2 << 20))


def test_recv_deadline(pair: Pair) -> None:
    _, b = pair
    b.timeout = 0.2
    assert b.timeout == pytest.approx(0.2)
    with pytest.raises(pie.ChannelTimeoutError) as info:
        b.recv(10)
    assert isinstance(info.value, TimeoutError)
    assert isinstance(info.value, pie.ChannelError)
    with pytest.raises(ValueError, match="timeout"):
        b.timeout = 0


def test_memory_sender_blocks_then_times_out_when_reader_stalls() -> None:
    a, _b = pie.memory_pair(capacity_bytes=1024)
    a.timeout = 0.2
    with pytest.raises(pie.ChannelTimeoutError):
        a.send(bytes(4 << 20))


def test_connect_to_closed_port_fails_within_timeout() -> None:
    listener = pie.TcpListener("127.0.0.1", 0)
    port = listener.port
    listener.close()
    start = time.monotonic()
    with pytest.raises(pie.ChannelError, match=str(port)):
        pie.tcp_connect("127.0.0.1", port, timeout=3.0)
    assert time.monotonic() - start < 3.0 + 1.0


def test_accept_deadline_and_bad_addresses() -> None:
    with pie.TcpListener("127.0.0.1", 0) as listener:
        with pytest.raises(pie.ChannelTimeoutError):
            listener.accept(timeout=0.1)
    with pytest.raises(pie.ChannelError):
        listener.accept(timeout=0.1)
    with pytest.raises(pie.ChannelError, match="resolve"):
        pie.tcp_connect("no-such-host.invalid", 1, timeout=2.0)


def test_frames_round_trip_and_checks(pair: Pair) -> None:
    a, b = pair
    a.send_frame(7, b"hello")
    assert b.recv_frame(7, max_bytes=5) == b"hello"
    a.send_frame(7, b"")
    assert b.recv_frame(7, max_bytes=0) == b""
    a.send_frame(8, b"x")
    with pytest.raises(pie.ProtocolError, match="type 8"):
        b.recv_frame(7, max_bytes=100)


def test_frame_with_hostile_length_is_refused_without_reading(pair: Pair) -> None:
    a, b = pair
    # A forged header announcing 2^63 bytes: refused from the header alone.
    a.send((9).to_bytes(4, "little") + (1 << 63).to_bytes(8, "little"))
    a.flush()
    with pytest.raises(pie.OversizeMessageError, match="limit is 1024"):
        b.recv_frame(9, max_bytes=1024)


def test_truncated_frame_raises_peer_closed(pair: Pair) -> None:
    a, b = pair
    a.send((9).to_bytes(4, "little") + (100).to_bytes(8, "little") + b"only part")
    a.close()
    with pytest.raises(pie.PeerClosedError):
        b.recv_frame(9, max_bytes=1024)
