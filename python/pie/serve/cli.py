"""``python -m pie.serve``: serve a network, query it, or run the embedded demo.

  python -m pie.serve demo [--link loopback|lan|wan]
  python -m pie.serve server --model model.pt --port 7000 [--calibration FILE] [--tls-cert C --tls-key K] [limits]
  python -m pie.serve client --connect 127.0.0.1:7000 --input a.png [b.png ... | FOLDER] [--prepare K] [--batch B] [--resize] [--json] [--tls-ca CA]

The server sends its public Plan (architecture, shapes, scales, rings; no
weights) to each client, then both run the protocol; the client answers
every image on one connection and prints, per image, the prediction and the
latency/traffic of the offline and online phases (--json: one JSON line per
image). The server admits at most --max-sessions sessions and
--max-total-memory of offline material at a time (more clients are refused
as busy), keeps up to --pool prepared sets per connection, gives a new
connection --handshake-timeout seconds to say HELLO and drops a session idle
for --idle-timeout seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .. import compiler
from ..calibration import CalibrationError
from ..channel import (
    Channel,
    ChannelError,
    ChannelTimeoutError,
    OversizeMessageError,
    ProtocolError,
    TcpListener,
    TlsListener,
    tcp_connect,
    tls_connect,
)
from ..link import PRESETS
from ..models import checkpoint
from ..plan import OUTPUT_REVEALS, Plan
from ..protocol import Client, ClientSession, infer, wire
from ..protocol.limits import Limits, MaterialEstimate
from ..protocol.report import format_size
from .inputs import fit_input, input_files, load_input, read_input
from .model import load_server
from .server import serve_forever

__all__ = ["main"]


def _summary(logits: np.ndarray, report: Any, classes: list[str] | None) -> str:
    """The prediction (``logits`` may be a label-only result: the class itself) and the cost table."""
    k = int(logits) if np.ndim(logits) == 0 else int(np.argmax(logits))
    name = f" ({classes[k]})" if classes and k < len(classes) else ""
    return f"prediction: class {k}{name}\n\n{report.table()}"


def _demo(args: argparse.Namespace) -> int:
    files = resources.files("pie") / "data"
    with resources.as_file(files / "demo_model.pt") as model_path:
        server = load_server(model_path, threads=args.threads, output=args.output)
        classes = checkpoint.checkpoint_meta(model_path).get("classes")
    with resources.as_file(files / "demo_input.npy") as input_path:
        x = load_input(input_path, server.plan.input_shape)
    print(f"network: {server.plan.relu_count():,} ReLUs, {len(server.plan.steps)} steps")
    logits, report = infer(server.plan, x, threads=args.threads, link=args.link)
    label_only = server.plan.output.reveal == "label"
    reference = server.plan.reference_label(x) if label_only else server.plan.run_reference(x)
    same = np.array_equal(logits, reference)
    if label_only:
        print("output: the top-1 label only (garbled argmax; the logits stay shared)")
    print(_summary(logits, report, classes))
    print(f"\nsecure output equals the cleartext fixed-point reference: {'yes' if same else 'NO'}")
    return 0 if same else 1


def _size(text: str) -> int:
    """A byte count with an optional binary suffix: 512M, 4G, 1T (or plain bytes)."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 512M, 4G)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return parse


def _port(text: str) -> int:
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a port 1-65535 (0: any free port), got {text!r}")
    return int(text)


def _address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pie.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="server and client in this process on the bundled model and image")
    demo.add_argument("--threads", type=int, default=0, help="garbling/evaluation threads (0: all cores)")
    demo.add_argument("--output", choices=OUTPUT_REVEALS, default="logits",
                      help="what the client learns: the logits, or only the top-1 label (default logits)")
    demo.add_argument("--link", choices=list(PRESETS), default=None,
                      help="run the two parties across an emulated network link (see pie.Link)")
    defaults = Limits()
    srv = sub.add_parser("server", help="serve a checkpoint over TCP")
    srv.add_argument("--model", required=True, type=Path,
                     help="checkpoint: pie's format, or a DeepReDuce .pth.tar (then give --arch)")
    srv.add_argument("--arch", default=None, help="network name (see pie.models.names()) for checkpoints "
                     "that do not record their configuration")
    srv.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                     help="calibration images for compiling: .npz (N,C,H,W; floats in [0,1] or "
                     "uint8) or a folder of PNG/JPEG images of the input size (default: the "
                     "checkpoint's stored sample, else random images)")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=_port, default=7000,
                     help="TCP port, 1-65535 (default 7000; 0 picks a free one)")
    srv.add_argument("--threads", type=int, default=0, help="garbling threads per session (0: all cores)")
    srv.add_argument("--output", choices=OUTPUT_REVEALS, default="logits",
                     help="what clients learn: the logits, or only the top-1 label by a garbled "
                     "argmax (default logits)")
    tls = srv.add_argument_group("TLS (plain TCP without --tls-cert)")
    tls.add_argument("--tls-cert", type=Path, metavar="PEM", help="the server's certificate chain")
    tls.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key (not encrypted)")
    tls.add_argument("--tls-client-ca", type=Path, metavar="PEM",
                     help="require client certificates issued by these CAs")
    lim = srv.add_argument_group("limits")
    lim.add_argument("--max-sessions", type=_positive(int), default=defaults.max_sessions,
                     help=f"sessions served at the same time; more are refused as busy "
                     f"(default {defaults.max_sessions})")
    lim.add_argument("--max-connections", type=_positive(int), default=defaults.max_connections,
                     help="connections handled at the same time, handshakes included; more wait "
                     f"in the listen backlog (default {defaults.max_connections})")
    lim.add_argument("--handshake-timeout", type=_positive(float), default=defaults.handshake_timeout,
                     metavar="SECONDS", help="time a new connection has, in all, to ask for the "
                     f"plan and say HELLO (default {defaults.handshake_timeout:g})")
    lim.add_argument("--idle-timeout", type=_positive(float), default=defaults.idle_timeout,
                     metavar="SECONDS", help="a session without progress for this long is dropped "
                     f"and its material freed (default {defaults.idle_timeout:g})")
    lim.add_argument("--max-session-memory", type=_size, default=defaults.max_session_bytes, metavar="SIZE",
                     help="offline material one session may need, e.g. 512M "
                     f"(default {defaults.max_session_bytes >> 20} MiB)")
    lim.add_argument("--pool", type=int, default=defaults.pool, metavar="K",
                     help="prepared sets the server offers to keep ready per connection, refilled "
                     "while the connection is idle by clients that accept (within the memory "
                     f"limits; 0: only what clients ask for; default {defaults.pool})")
    lim.add_argument("--max-total-memory", type=_size, default=defaults.max_total_bytes, metavar="SIZE",
                     help="offline material of all sessions together; more are refused as busy "
                     "(default half the physical memory)")
    cli = sub.add_parser("client", help="run private inferences of one or more images against a server",
                         epilog="Every input file is read and checked before connecting; all "
                         "images are answered on one connection. Exit status: 0 done; 1 connection "
                         "or protocol failure (a peer that does not answer as a pie server within "
                         "--plan-timeout included); 2 bad arguments or an unusable input; 75 the "
                         "server is busy (try again later).")
    cli.add_argument("--connect", required=True, type=_address, metavar="HOST:PORT",
                     help="the server's address")
    cli.add_argument("--input", required=True, type=Path, nargs="+", metavar="PATH",
                     help="images: .npy (C,H,W in [0,1]) or .png/.jpg, of the served network's "
                     "input size (else refused, with the size expected), or folders of them "
                     "(their images and .npy files in name order)")
    cli.add_argument("--prepare", type=_positive(int), default=1, metavar="K",
                     help="prepared sets (offline phases) to run ahead, up to K images' worth at "
                     "a time; 1 (the default) prepares each query's set just before it, which "
                     "gives the first result soonest")
    cli.add_argument("--batch", type=_positive(int), default=1, metavar="B",
                     help="images per online phase: B images go in the rounds of one (default 1)")
    cli.add_argument("--resize", action="store_true",
                     help="resize an image file (.png/.jpg) of another size to the network's input "
                     "size; .npy arrays are never resized (resizing is for image files only)")
    cli.add_argument("--json", action="store_true",
                     help="print one JSON line per image (logits, prediction, the query's "
                     "offline and online totals) instead of tables")
    cli.add_argument("--timeout", type=_positive(float), default=10.0, metavar="SECONDS",
                     help="connect timeout (default 10)")
    cli.add_argument("--plan-timeout", type=_positive(float), default=10.0, metavar="SECONDS",
                     help="time the server has to answer the plan request; a peer that does not "
                     "answer as a pie server in time fails with status 1 (default 10)")
    cli.add_argument("--io-timeout", type=_positive(float), default=120.0, metavar="SECONDS",
                     help="give up when the server makes no progress for this long (default 120)")
    cli.add_argument("--threads", type=int, default=0, help="evaluation threads (0: all cores)")
    ctls = cli.add_argument_group("TLS (plain TCP without --tls-ca)")
    ctls.add_argument("--tls-ca", type=Path, metavar="PEM", help="CAs that may issue the server's certificate")
    ctls.add_argument("--tls-server-name", metavar="NAME",
                      help="the name the server's certificate must carry (default: the host)")
    ctls.add_argument("--tls-cert", type=Path, metavar="PEM", help="a client certificate, for servers that ask")
    ctls.add_argument("--tls-key", type=Path, metavar="PEM", help="its private key (not encrypted)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module's docstring); returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    if args.command == "demo":
        return _demo(args)
    if args.command == "server":
        return _server(args)
    if (args.tls_cert is None) != (args.tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    if args.tls_ca is None and (args.tls_cert or args.tls_server_name):
        _fail("--tls-cert and --tls-server-name need --tls-ca")
    return _client(args)


def _fail(message: str) -> None:
    """A command-line error: ``error: message`` on stderr (one line, no
    usage text) and exit status 2, like argparse's own errors."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _server(args: argparse.Namespace) -> int:
    try:
        limits = Limits(max_sessions=args.max_sessions, max_connections=args.max_connections,
                        handshake_timeout=args.handshake_timeout, idle_timeout=args.idle_timeout,
                        max_session_bytes=args.max_session_memory, max_total_bytes=args.max_total_memory,
                        pool=args.pool)
    except ValueError as exc:
        _fail(str(exc))
    if (args.tls_cert is None) != (args.tls_key is None):
        _fail("--tls-cert and --tls-key go together")
    if args.tls_client_ca is not None and args.tls_cert is None:
        _fail("--tls-client-ca needs --tls-cert and --tls-key")
    try:
        server = load_server(args.model, args.arch, args.threads, calibration=args.calibration,
                             output=args.output)
    except (checkpoint.CheckpointError, CalibrationError, compiler.CompileError, FileNotFoundError) as exc:
        _fail(str(exc))
    need = MaterialEstimate.from_plan(server.plan).server_bytes
    if need > limits.max_session_bytes:
        _fail(f"a session of this model needs about {need >> 20} MiB of offline material, "
                     f"more than --max-session-memory ({limits.max_session_bytes >> 20} MiB)")
    try:
        listener = _listen(args)
    except ChannelError as exc:  # TlsError included: unreadable certificate or key
        message = str(exc)
        if not message.startswith("cannot listen"):
            message = f"cannot listen on {args.host}:{args.port}: {message}"
        _fail(message)
    scheme = "TLS" if args.tls_cert else "TCP"
    print(f"serving {args.model} ({server.plan.relu_count():,} ReLUs, plan {server.digest[:16]}) "
          f"on {args.host}:{listener.port} over {scheme}; {need / (1 << 20):.1f} MiB of offline "
          f"material per session, at most {limits.max_sessions} "
          f"session{'' if limits.max_sessions == 1 else 's'} at a time", flush=True)
    with _stop_signals():
        try:
            serve_forever(server, listener, limits)
        except KeyboardInterrupt:
            pass
    return 0


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGINT and SIGTERM stop the server (KeyboardInterrupt in the main thread),
    even when the parent process left them ignored or blocked; restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    wanted = {signal.SIGINT, signal.SIGTERM}
    previous = {sig: signal.signal(sig, interrupt) for sig in wanted}
    blocked = signal.pthread_sigmask(signal.SIG_UNBLOCK, wanted) & wanted
    try:
        yield
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _listen(args: argparse.Namespace) -> TcpListener | TlsListener:
    """The server's listener: TLS with ``--tls-cert``, else plain TCP."""
    if args.tls_cert is None:
        return TcpListener(args.host, args.port)
    return TlsListener(args.host, args.port, cert=str(args.tls_cert), key=str(args.tls_key),
                       client_ca=None if args.tls_client_ca is None else str(args.tls_client_ca))


def _connect(args: argparse.Namespace) -> Channel:
    """The client's channel: TLS with ``--tls-ca``, else plain TCP."""
    host, port = args.connect
    if args.tls_ca is None:
        return tcp_connect(host, port, timeout=args.timeout)
    return tls_connect(host, port, ca=str(args.tls_ca),
                       cert=None if args.tls_cert is None else str(args.tls_cert),
                       key=None if args.tls_key is None else str(args.tls_key),
                       server_name=args.tls_server_name, timeout=args.timeout)


def _client(args: argparse.Namespace) -> int:
    host, port = args.connect
    try:  # before connecting: a bad file costs the server nothing
        paths = input_files(args.input)
        raws = [read_input(path) for path in paths]
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    transport = "tls" if args.tls_ca is not None else "tcp"
    try:
        with _connect(args) as channel:
            conv = wire.Conversation(channel, "client")
            channel.timeout = min(args.plan_timeout, args.io_timeout)
            try:
                plan = conv.request_plan()
            except ChannelTimeoutError:
                print(f"error: {host}:{port} did not answer as a pie server (no plan within "
                      f"{args.plan_timeout:g} s; see --plan-timeout)", file=sys.stderr)
                return 1
            except (wire.MalformedMessageError, OversizeMessageError, ProtocolError) as exc:
                print(f"error: {host}:{port} did not answer as a pie server "
                      f"({type(exc).__name__}: {exc})", file=sys.stderr)
                return 1
            channel.timeout = args.io_timeout
            try:
                images = [fit_input(raw, plan.input_shape, resize=args.resize, source=path)
                          for raw, path in zip(raws, paths)]
            except ValueError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            with ClientSession(Client(plan, threads=args.threads), channel, conversation=conv) as session:
                _answer(session, plan, paths, images, args, transport)
    except wire.ServerBusyError as exc:
        print(f"error: {exc} (try again later)", file=sys.stderr)
        return 75  # EX_TEMPFAIL
    except ChannelError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # an input the plan refuses
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def _answer(session: ClientSession, plan: Plan, paths: list[Path], images: list[np.ndarray],
            args: argparse.Namespace, transport: str) -> None:
    """Answer ``images`` on ``session``, ``args.batch`` per online phase, with
    up to ``args.prepare`` images' sets prepared ahead; print each result as
    soon as it is known."""
    started = time.perf_counter()
    ahead = max(args.prepare, args.batch)
    many = len(images) > 1
    for first in range(0, len(images), args.batch):
        chunk = images[first:first + args.batch]
        if session.prepared < len(chunk):
            session.prepare(min(ahead, len(images) - first), progress=not args.json)
        logits, report = session.online(np.stack(chunk))
        report.transport = transport
        for k, row in enumerate(logits):
            path = paths[first + k]
            # A label-only Plan answers with the class itself (a scalar per image).
            label = int(row) if np.ndim(row) == 0 else int(np.argmax(row))
            if args.json:
                result = {"prediction": label} if np.ndim(row) == 0 else {"logits": row.tolist(), "prediction": label}
                print(json.dumps({"input": str(path), **result, "output": plan.output.reveal,
                                  "plan": plan.digest(), **report.totals(),
                                  "elapsed_seconds": time.perf_counter() - started}), flush=True)
            elif many:
                print(f"{path}: class {label}  offline {report.offline_seconds:.2f} s "
                      f"({format_size(report.offline_bytes)}), online {1e3 * report.online_seconds:.1f} ms "
                      f"({format_size(report.online_bytes)}, {report.online_rounds} messages)"
                      f"{f', batch of {report.batch}' if report.batch > 1 else ''}", flush=True)
            else:
                print(_summary(row, report, None))
    if many and not args.json:
        print(f"{len(images)} images in {time.perf_counter() - started:.2f} s on one connection")
