"""``python -m pie.serve`` / ``python -m pie plan`` on bad input: one row of
the error table per test. Every failure is one ``error: ...`` line on stderr
(no usage text, no traceback) and a documented exit status: 2 for bad
arguments and unusable files, 1 for connection and protocol failures.

Input files are checked before the client connects, so most client rows
point ``--connect`` at a closed port or at a listener that must see no
connection: a check done after connecting would show up as a connection
error (status 1) or as an accepted connection."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path

import numpy as np
import pie
import pytest
import torch
from pie import serve
from pie.serve import cli
from pie.serve.cli import _parser
from pie.__main__ import main as pie_main
from PIL import Image
from serverutil import serving

DEMO = Path(str(resources.files("pie") / "data" / "demo_model.pt"))
SHAPE = (3, 16, 16)


def error_line(err: str) -> str:
    """The one ``error: ...`` line of ``err``; no traceback, no usage text."""
    assert "Traceback" not in err, err
    assert "usage:" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


def exit_status(call: Callable[[], int]) -> int:
    """``call()``'s status, whether returned or raised as SystemExit."""
    try:
        return call()
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture()
def untouched() -> Iterator[tuple[int, Callable[[], bool]]]:
    """A listening socket and a check that no client ever connected to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        s.settimeout(0.2)

        def connected() -> bool:
            try:
                conn, _ = s.accept()
            except (TimeoutError, socket.timeout):
                return False
            conn.close()
            return True

        yield int(s.getsockname()[1]), connected


@pytest.fixture(scope="module")
def demo_server() -> pie.Server:
    return serve.load_server(DEMO)


@pytest.fixture()
def running(demo_server: pie.Server) -> Iterator[int]:
    with serving(demo_server, serve.Limits(max_sessions=2)) as (port, _):
        yield port


def client(port: int, path: Path, *extra: str) -> list[str]:
    return ["client", "--connect", f"127.0.0.1:{port}", "--input", str(path), *extra]


# ---------------------------------------------------------------- row 1


@pytest.mark.parametrize("value, message", [
    (np.nan, "NaN or infinite"),
    (np.inf, "NaN or infinite"),
    (-np.inf, "NaN or infinite"),
    (1.5, "[0, 1]"),
    (-0.1, "[0, 1]"),
])
def test_row1_nan_inf_and_out_of_range_npy(value: float, message: str, tmp_path: Path, untouched,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    port, connected = untouched
    x = np.full(SHAPE, 0.5)
    x[1, 2, 3] = value
    np.save(tmp_path / "x.npy", x)
    assert serve.main(client(port, tmp_path / "x.npy")) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not connected()


# ---------------------------------------------------------------- row 2


def _write_empty_png(p: Path) -> None:
    p.write_bytes(b"")


def _write_text_png(p: Path) -> None:
    p.write_text("this is not an image\n")


def _write_truncated_png(p: Path) -> None:
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(p)
    p.write_bytes(p.read_bytes()[:40])


def _write_empty_npy(p: Path) -> None:
    np.save(p, np.zeros((0,)))


def _write_zero_byte_npy(p: Path) -> None:
    p.write_bytes(b"")


@pytest.mark.parametrize("name, write, message", [
    ("x.png", _write_empty_png, "empty file"),
    ("x.png", _write_text_png, "not a readable image"),
    ("x.png", _write_truncated_png, "not a readable image"),
    ("x.npy", _write_empty_npy, "empty array"),
    ("x.npy", _write_zero_byte_npy, "empty file"),
    ("missing.png", None, "no such file"),
    ("missing.npy", None, "no such file"),
])
def test_row2_unreadable_inputs_fail_before_connecting(name: str, write, message: str, tmp_path: Path,
                                                       untouched, capsys: pytest.CaptureFixture[str]) -> None:
    port, connected = untouched
    if write is not None:
        write(tmp_path / name)
    assert serve.main(client(port, tmp_path / name)) == 2
    assert message in error_line(capsys.readouterr().err)
    assert not connected()


# ---------------------------------------------------------------- row 3


def test_row3_text_file_named_npy_as_input(tmp_path: Path, untouched,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    port, connected = untouched
    (tmp_path / "x.npy").write_text("0.5 0.5 0.5\n")
    assert serve.main(client(port, tmp_path / "x.npy")) == 2
    line = error_line(capsys.readouterr().err)
    assert "not a NumPy array file" in line
    assert "pickle" not in line and "unsafe" not in line
    assert not connected()


@pytest.mark.parametrize("command", ["server", "plan"])
def test_row3_npy_as_model(command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "model.npy", np.zeros(SHAPE))
    call = ((lambda: serve.main(["server", "--model", str(tmp_path / "model.npy"), "--port", "0"]))
            if command == "server" else (lambda: pie_main(["plan", str(tmp_path / "model.npy")])))
    assert exit_status(call) == 2
    line = error_line(capsys.readouterr().err)
    assert "not a checkpoint" in line
    assert "weights_only" not in line and "trusted" not in line and "arbitrary code" not in line


# ---------------------------------------------------------------- row 4


def test_row4_unknown_arch(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: serve.main(["server", "--model", str(DEMO), "--arch", "nosucharch",
                                           "--port", "0"])) == 2
    line = error_line(capsys.readouterr().err)
    assert line.startswith("error: unknown network 'nosucharch'; known: ")
    assert all(name in line for name in pie.models.names())


# ---------------------------------------------------------------- row 5


@pytest.mark.parametrize("port", ["70000", "65536", "-1", "seven"])
def test_row5_port_out_of_range(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: serve.main(["server", "--model", str(DEMO), "--port", port])) == 2
    err = capsys.readouterr().err
    assert "argument --port" in err and "1-65535" in err, err


def test_row5_port_range_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: serve.main(["server", "--model", str(DEMO), "--port", "70000"])) == 2
    err = capsys.readouterr().err
    assert "argument --port" in err and "1-65535" in err and "0: any free port" in err
    assert _parser().parse_args(["server", "--model", "m.pt", "--port", "0"]).port == 0
    assert _parser().parse_args(["server", "--model", "m.pt", "--port", "65535"]).port == 65535


# ---------------------------------------------------------------- row 6


def _png(path: Path, size: int) -> Path:
    img = (np.random.default_rng(size).random((size, size, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(path)
    return path


def test_row6_wrong_size_png_refused_unless_resize(running: int, demo_server: pie.Server, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    png = _png(tmp_path / "big.png", 20)
    assert serve.main(client(running, png)) == 2
    line = error_line(capsys.readouterr().err)
    assert "20x20" in line and "16x16" in line and "--resize" in line
    assert serve.main(client(running, png, "--resize", "--json")) == 0
    out = json.loads(capsys.readouterr().out)
    expected = serve.load_input(png, SHAPE, resize=True)
    assert np.array_equal(np.array(out["logits"]), demo_server.plan.run_reference(expected))


def test_row6_wrong_size_npy_refused_even_with_resize(running: int, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8)))
    assert serve.main(client(running, tmp_path / "x.npy")) == 2
    assert "expects (3, 16, 16)" in error_line(capsys.readouterr().err)
    assert serve.main(client(running, tmp_path / "x.npy", "--resize")) == 2
    assert "image files only" in error_line(capsys.readouterr().err)


def test_row6_help_states_the_rule(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: serve.main(["client", "--help"])) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--resize" in out and "image files only" in out and "else refused" in out


# ---------------------------------------------------------------- row 7


def test_row7_silent_peer_hits_the_plan_timeout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.zeros(SHAPE))
    with socket.socket() as silent:  # accepts (the kernel does) and never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        start = time.monotonic()
        assert serve.main(client(port, tmp_path / "x.npy", "--plan-timeout", "1")) == 1
        elapsed = time.monotonic() - start
    line = error_line(capsys.readouterr().err)
    assert "did not answer as a pie server" in line and "--plan-timeout" in line
    assert 0.9 <= elapsed < 8, elapsed


def test_row7_plan_timeout_default_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: serve.main(["client", "--help"])) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--plan-timeout SECONDS" in out and "pie server" in out
    assert _parser().parse_args(["client", "--connect", "h:1", "--input", "x"]).plan_timeout == 10.0


# ---------------------------------------------------------------- row 8


def test_row8_json_over_tcp_reports_tcp(running: int, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    np.save(tmp_path / "x.npy", np.random.default_rng(8).random(SHAPE))
    assert serve.main(client(running, tmp_path / "x.npy", "--json")) == 0
    assert json.loads(capsys.readouterr().out)["transport"] == "tcp"


# ---------------------------------------------------------------- row 9


def test_row9_port_in_use_says_so_once(capsys: pytest.CaptureFixture[str]) -> None:
    taken = pie.TcpListener("127.0.0.1", 0)
    try:
        assert exit_status(lambda: serve.main(["server", "--model", str(DEMO),
                                               "--port", str(taken.port)])) == 2
    finally:
        taken.close()
    line = error_line(capsys.readouterr().err)
    assert line.count("cannot listen") == 1 and line.count(str(taken.port)) == 1, line


@pytest.mark.parametrize("sessions, text", [("1", "at most 1 session "), ("3", "at most 3 sessions ")])
def test_row9_banner_pluralises(sessions: str, text: str, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "serve_forever", lambda *args, **kwargs: None)
    assert serve.main(["server", "--model", str(DEMO), "--port", "0", "--max-sessions", sessions]) == 0
    assert text in capsys.readouterr().out


def test_row9_server_errors_print_no_usage(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["server", "--model", "/nonexistent/model.pt", "--port", "0"],
                 ["server", "--model", str(DEMO), "--tls-cert", "c.pem"]):
        assert exit_status(lambda: serve.main(argv)) == 2
        error_line(capsys.readouterr().err)


def test_row9_client_timeouts_show_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert exit_status(lambda: serve.main(["client", "--help"])) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "connect timeout (default 10)" in out
    assert "for this long (default 120)" in out


def test_row9_mismatched_arch_is_short_and_names_the_arch(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    net = pie.models.build("DRD_C100_12K").eval()
    path = tmp_path / "drd.pth.tar"
    torch.save({"snet": {"module." + k: v for k, v in net.state_dict().items()}}, path)
    assert exit_status(lambda: serve.main(["server", "--model", str(path), "--arch", "DRD_C100_230K",
                                           "--port", "0"])) == 2
    line = error_line(capsys.readouterr().err)
    assert "'DRD_C100_230K'" in line and "does not match" in line
    assert len(line) < 300, len(line)


# ---------------------------------------------------------------- row 10


def _random_files(seed: int, n: int = 20) -> Iterator[bytes]:
    """Random bytes, some opening with the magic of the formats the loaders
    know, so that the fuzz reaches past the first check."""
    rng = np.random.default_rng(seed)
    prefixes = [b"", b"\x93NUMPY", b"\x93NUMPY\x01\x00", b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"\x80\x02",
                b"\xff\xd8\xff"]
    for i in range(n):
        body = rng.integers(0, 256, size=int(rng.integers(0, 600)), dtype=np.uint8).tobytes()
        yield prefixes[i % len(prefixes)] + body


@pytest.mark.parametrize("name", ["x.npy", "x.png"])
def test_row10_fuzzed_input_files(name: str, tmp_path: Path, closed_port: int,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / name
    for data in _random_files(10 if name.endswith("npy") else 11):
        path.write_bytes(data)
        assert serve.main(client(closed_port, path)) == 2, data[:16]
        error_line(capsys.readouterr().err)


def test_row10_fuzzed_model_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "model.pt"
    for data in _random_files(12):
        path.write_bytes(data)
        assert exit_status(lambda: serve.main(["server", "--model", str(path), "--port", "0"])) == 2
        line = error_line(capsys.readouterr().err)
        assert "weights_only" not in line
