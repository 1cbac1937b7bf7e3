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
import itertools
import json
import logging
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..models import checkpoint
from .. import compiler
from ..calibration import CalibrationError, check_images, load_calibration
from ..channel import (
    Channel,
    ChannelError,
    ChannelTimeoutError,
    OversizeMessageError,
    PeerClosedError,
    ProtocolError,
    TcpListener,
    TlsListener,
    tcp_connect,
    tls_connect,
)
from ..link import PRESETS
from ..plan import OUTPUT_REVEALS, Plan
from ..protocol import Client, ClientSession, Server, ServerSession, infer, wire
from ..protocol.limits import Admission, Limits, MaterialEstimate, SessionBudget
from ..protocol.report import Report, format_size
from ..reduce.data import CIFAR100_STATS, TINY_IMAGENET_STATS

__all__ = [
    "Limits",
    "LoadedModel",
    "SessionLog",
    "SessionRecord",
    "fetch_public_plan",
    "fit_input",
    "input_files",
    "load_input",
    "load_model",
    "load_server",
    "main",
    "query",
    "read_input",
    "serve_forever",
]

_log = logging.getLogger("pie.serve")


@dataclass(frozen=True)
class LoadedModel:
    """A checkpoint compiled for serving: the float network, its Plan, the
    checkpoint's ``meta``, and the calibration images the Plan was compiled
    on (``None``: :func:`pie.compile`'s random images) with where they came from."""

    net: Any
    plan: Plan
    meta: dict[str, Any]
    calibration: np.ndarray | None
    calibration_source: str


def load_model(model: str | Path, arch: str | None = None,
               calibration: np.ndarray | str | Path | None = None, output: str = "logits") -> LoadedModel:
    """Load a checkpoint and compile it, folding the input normalisation that a
    pie checkpoint records (other checkpoints: the CIFAR-100 or TinyImageNet
    statistics the DeepReDuce releases were trained with, by input size).

    Calibration images, in this order: ``calibration`` (an array (N, C, H, W)
    in [0, 1], or a file / folder for :func:`pie.calibration.load_calibration`),
    the sample the checkpoint stores (:func:`pie.models.checkpoint.calibration_sample`),
    else :func:`pie.compile`'s random images. ``output`` is what clients learn:
    ``"logits"`` or ``"label"`` (the top-1 class only; see :func:`pie.compile`).

    Raises:
        CheckpointError: unreadable checkpoint or unknown / mismatched arch.
        CalibrationError: unusable calibration file or array.
        CompileError: the network does not compile.
        FileNotFoundError: no checkpoint at ``model``.
    """
    net = checkpoint.load_checkpoint(model, arch)
    meta = checkpoint.checkpoint_meta(model)
    size = net.config.input_size
    norm = meta.get("input_norm")
    if norm is None:
        mean, std = TINY_IMAGENET_STATS if size == 64 else CIFAR100_STATS
        norm = {"mean": list(mean), "std": list(std)}
    shape = tuple(meta.get("input_shape", (3, size, size)))
    images: np.ndarray | None
    if isinstance(calibration, (str, Path)):
        images = load_calibration(calibration, shape)
        source = f"{images.shape[0]} images from {calibration}"
    elif calibration is not None:
        images = check_images(np.asarray(calibration), shape)
        source = f"{images.shape[0]} images given"
    else:
        images = checkpoint.calibration_sample(model)
        if images is not None and tuple(images.shape[1:]) != shape:
            raise checkpoint.CheckpointError(
                f"the checkpoint's calibration sample has shape {images.shape}, the network "
                f"expects (N, {', '.join(map(str, shape))})")
        source = (f"{images.shape[0]} images stored in the checkpoint" if images is not None
                  else "none (random images)")
    plan = compiler.compile(net, shape, input_norm=(norm["mean"], norm["std"]), calibration=images,
                            output=output)
    return LoadedModel(net, plan, meta, images, source)


def load_server(model: str | Path, arch: str | None = None, threads: int = 0,
                calibration: np.ndarray | str | Path | None = None, output: str = "logits") -> Server:
    """Load a checkpoint and compile it for serving (see :func:`load_model`,
    which also says where the calibration images come from and what ``output`` is)."""
    return Server(load_model(model, arch, calibration, output).plan, threads=threads)


class Listener(Protocol):
    """What :func:`serve_forever` accepts connections from (TCP or TLS)."""

    def accept(self, timeout: float = ...) -> Channel: ...


@dataclass(frozen=True)
class SessionRecord:
    """How one connection ended.

    Attributes:
        number: the connection's number, in order of acceptance (from 1).
        outcome: ``"ok"`` (queries served: the client said goodbye, or went
            away between queries after at least one), ``"refused"`` (busy: a
            limit was reached at the handshake) or ``"failed"`` (anything else:
            the peer went away, timed out, sent something unexpected or
            malformed, or a mismatch).
        phase: the session phase it ended in (see :class:`pie.protocol.wire.Phase`).
        error: the exception's class (``None`` when ``ok``).
        message: the exception's message.
        started: ``time.monotonic()`` at acceptance.
        ended: ``time.monotonic()`` once its resources were released.
    """

    number: int
    outcome: str
    phase: str
    error: type[BaseException] | None
    message: str
    started: float
    ended: float


class SessionLog:
    """The server's record of finished connections (the most recent
    ``keep``) and counts of every outcome; thread-safe."""

    def __init__(self, keep: int = 10_000) -> None:
        self._records: deque[SessionRecord] = deque(maxlen=keep)
        self._counts: dict[str, int] = {"ok": 0, "refused": 0, "failed": 0}
        self._cond = threading.Condition()

    def add(self, record: SessionRecord) -> None:
        """Record one finished connection."""
        with self._cond:
            self._records.append(record)
            self._counts[record.outcome] += 1
            self._cond.notify_all()

    def records(self) -> list[SessionRecord]:
        """The recorded connections, oldest first."""
        with self._cond:
            return list(self._records)

    def counts(self) -> dict[str, int]:
        """Connections by outcome since the start."""
        with self._cond:
            return dict(self._counts)

    def wait_for(self, total: int, timeout: float) -> bool:
        """Wait until at least ``total`` connections have finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: sum(self._counts.values()) >= total, timeout)


def serve_forever(server: Server, listener: Listener, limits: Limits | None = None,
                  stop: threading.Event | None = None, log: SessionLog | None = None) -> None:
    """Accept clients until ``stop`` is set, each connection in its own thread.

    A connection gets ``limits.handshake_timeout`` seconds in all to ask for
    the public Plan and say HELLO; its session is then admitted if a
    session slot and enough offline-material budget are free (else it is
    refused with a busy ``WELCOME``, :class:`ServerBusyError` on the client),
    and from then on it may go ``limits.idle_timeout`` seconds without
    progress before it is dropped. An admitted session may hold more
    prepared sets (up to ``limits.pool`` offered, or what the client asks
    for) while the memory limits allow; a request past them is refused as
    busy and the session goes on. A failing connection (closed, stalled,
    malformed, corrupted) ends its own session only: it is logged and
    recorded in ``log``, its material and socket are released, and the other
    sessions go on. Returns after ``stop`` (or raises KeyboardInterrupt) once
    every connection has ended.
    """
    limits = limits or Limits()
    stop = stop or threading.Event()
    log = log if log is not None else SessionLog()
    public = server.public_plan().to_bytes()
    estimate = MaterialEstimate.from_plan(server.plan)
    if estimate.server_bytes > limits.max_session_bytes:
        _log.warning("a session of this plan needs %.1f MiB of offline material, over the "
                     "per-session limit: every session will be refused", estimate.server_bytes / (1 << 20))
    admission = Admission(limits)
    connections = threading.BoundedSemaphore(limits.max_connections)
    workers: set[threading.Thread] = set()
    workers_lock = threading.Lock()
    numbers = itertools.count(1)

    def run(ch: Channel, number: int) -> None:
        started = time.monotonic()
        conv = wire.Conversation(ch, "server", public_plan=public)
        budget = SessionBudget(admission, estimate)

        def admit() -> None:
            budget.admit()
            conv.deadline = None
            ch.timeout = limits.idle_timeout

        outcome, error, message = "ok", None, ""
        session: ServerSession | None = None
        try:
            ch.timeout = limits.handshake_timeout
            conv.deadline = started + limits.handshake_timeout
            session = ServerSession(server, ch, conversation=conv, admit=admit, pool=limits.pool,
                                    budget=budget)
            session.serve()
        except wire.ServerBusyError as exc:
            outcome, error, message = "refused", type(exc), str(exc)
            _log.info("connection %d refused: %s", number, exc)
        except PeerClosedError as exc:
            if session is not None and session.queries and conv.phase is wire.Phase.IDLE:
                pass  # the client took its results and left between queries
            else:
                outcome, error, message = "failed", type(exc), str(exc)
                _log.warning("connection %d failed in phase %s: %s: %s", number, conv.phase.value,
                             type(exc).__name__, exc)
        except ChannelError as exc:
            outcome, error, message = "failed", type(exc), str(exc)
            _log.warning("connection %d failed in phase %s: %s: %s", number, conv.phase.value,
                         type(exc).__name__, exc)
        except Exception as exc:  # noqa: BLE001 - a bug: logged with its traceback, the server goes on
            outcome, error, message = "failed", type(exc), str(exc)
            _log.exception("connection %d: internal error in phase %s", number, conv.phase.value)
        finally:
            if session is not None:
                session.close()  # its prepared sets go with it, never used elsewhere
            ch.close()
            budget.close()
            connections.release()
            log.add(SessionRecord(number, outcome, conv.phase.value, error, message, started,
                                  time.monotonic()))
            with workers_lock:
                workers.discard(threading.current_thread())

    try:
        while not stop.is_set():
            if not connections.acquire(timeout=0.2):
                continue
            try:
                ch = listener.accept(timeout=0.2)
            except ChannelTimeoutError:
                connections.release()
                continue
            except ChannelError as exc:  # e.g. out of file descriptors: back off, keep serving
                connections.release()
                _log.warning("accept failed: %s", exc)
                stop.wait(0.1)
                continue
            worker = threading.Thread(target=run, args=(ch, next(numbers)), name="pie-connection",
                                      daemon=True)
            with workers_lock:
                workers.add(worker)
            try:
                worker.start()
            except RuntimeError as exc:  # no thread to be had: drop this connection, keep serving
                with workers_lock:
                    workers.discard(worker)
                ch.close()
                connections.release()
                _log.warning("cannot serve a connection: %s", exc)
    finally:
        # Also on Ctrl-C: sessions under way end on their own (each read is
        # bounded by the idle deadline) before the process goes on to exit.
        with workers_lock:
            running = list(workers)
        for worker in running:
            worker.join()


def fetch_public_plan(channel: Channel) -> Plan:
    """Ask the server on ``channel`` for its public Plan (raises
    :class:`~pie.protocol.wire.MalformedPlanError` if the reply is not one)."""
    return wire.Conversation(channel, "client").request_plan()


def query(channel: Channel, x: np.ndarray | str | Path, *, threads: int = 0,
          progress: bool = False, resize: bool = False,
          transport: str = "tcp") -> tuple[np.ndarray, Report, Plan]:
    """One private inference against a server: fetch its public Plan, run the
    protocol on ``x`` (an image (C, H, W) with values in [0, 1], or a file
    that :func:`load_input` reads, with its ``resize``) and return the logits,
    the cost report (its ``transport`` set to ``transport``) and the Plan.
    A file is read and checked (:func:`read_input`) before anything is sent.
    Raises the :class:`ChannelError` family
    (:class:`~pie.protocol.wire.ServerBusyError` when the server is at a
    limit, :class:`~pie.protocol.wire.MalformedPlanError` for an unreadable
    Plan), or :class:`ValueError` for an input that is unreadable or does not
    fit the Plan."""
    raw = read_input(x) if isinstance(x, (str, Path)) else None
    conv = wire.Conversation(channel, "client")
    plan = conv.request_plan()
    image = fit_input(raw, plan.input_shape, resize=resize, source=x) if raw is not None else x
    logits, report = _infer(channel, conv, plan, image, threads, progress)
    report.transport = transport
    return logits, report, plan


def _infer(channel: Channel, conv: wire.Conversation, plan: Plan, image: Any, threads: int,
           progress: bool) -> tuple[np.ndarray, Report]:
    with ClientSession(Client(plan, threads=threads), channel, conversation=conv) as session:
        session.offline(progress)
        return session.online(image)


def input_files(paths: list[Path]) -> list[Path]:
    """The input files named by ``paths``: files as given, and each folder's
    images and ``.npy`` arrays in name order (not recursive).

    Raises:
        ValueError: a folder without inputs, or no inputs at all.
    """
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.iterdir()
                           if p.is_file() and p.suffix.lower() in (*IMAGE_SUFFIXES, ".npy"))
            if not found:
                raise ValueError(f"{path}: a folder with no images or .npy files")
            out += found
        else:
            out.append(path)
    if not out:
        raise ValueError("no input given")
    return out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
# More than any network here takes (a 3x1024x1024 float64 image is 24 MiB).
MAX_INPUT_ELEMENTS = 1 << 26


def read_input(path: str | Path) -> np.ndarray:
    """Read and check an input file, before its network's shape is known:
    ``.npy`` (a numeric array, e.g. (C, H, W), values in [0, 1]) or an image
    (``.png``, ``.jpg``, ...: decoded to RGB, (3, H, W) scaled to [0, 1]).

    Raises:
        ValueError: a missing, unreadable, empty or undecodable file, or
            values that are NaN, infinite or outside [0, 1] (one-line messages).
    """
    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: no such file")
    if not path.is_file():
        raise ValueError(f"{path}: not a file")
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if size == 0:
        raise ValueError(f"{path}: empty file")
    x = _read_npy(path) if path.suffix.lower() == ".npy" else _read_image(path)
    if x.size == 0:
        raise ValueError(f"{path}: empty array {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{path}: contains NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{path}: values must lie in [0, 1] (found {x.min():g} to {x.max():g})")
    return x


def _read_npy(path: Path) -> np.ndarray:
    """A ``.npy`` file's numeric array, as float64; the header is checked
    first (no pickles, no objects, no absurd sizes)."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise ValueError(f"{path}: not a NumPy array file (.npy)")
            f.seek(0)
            version = fmt.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = fmt.read_array_header_1_0(f)
            elif version == (2, 0):
                shape, _, dtype = fmt.read_array_header_2_0(f)
            else:
                raise ValueError(f"{path}: not a NumPy array file (.npy version {version})")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:
        msg = str(exc)
        if msg.startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a NumPy array file (bad header)") from None
    if dtype.kind not in "biuf" or dtype.hasobject or dtype.names is not None:
        raise ValueError(f"{path}: holds {dtype} values, expected numbers")
    if int(np.prod(shape, dtype=np.int64)) > MAX_INPUT_ELEMENTS:
        raise ValueError(f"{path}: array of shape {tuple(shape)} is far too large for an image")
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as exc:  # truncated data and the like
        raise ValueError(f"{path}: not a readable NumPy array file ({_first_line(exc)})") from None
    return np.asarray(x, dtype=np.float64)


def _read_image(path: Path) -> np.ndarray:
    """An image file decoded to RGB, (3, H, W) float64 in [0, 1]."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_INPUT_ELEMENTS:
                raise ValueError(f"{path}: image of {img.width}x{img.height} pixels is far too large")
            img.load()
            rgb = img.convert("RGB")
    except ValueError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise ValueError(f"{path}: not a readable image ({_first_line(exc)})") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many kinds for a bad file
        raise ValueError(f"{path}: not a readable image ({_first_line(exc)})") from None
    return np.asarray(rgb, dtype=np.float64).transpose(2, 0, 1) / 255.0


def _first_line(exc: BaseException, limit: int = 120) -> str:
    text = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fit_input(x: np.ndarray, shape: tuple[int, ...], *, resize: bool = False,
              source: str | Path = "input") -> np.ndarray:
    """``x`` (from :func:`read_input` of ``source``) checked against the served
    network's input ``shape``. The rule is the same for images and arrays: a
    different size is refused with the size expected, unless ``resize`` is
    set; then an image file is resized to fit (an ``.npy`` array never is:
    resizing is for image files only).

    Raises:
        ValueError: the shape does not fit.
    """
    shape = tuple(shape)
    if x.shape == shape:
        return x
    is_image = Path(source).suffix.lower() in IMAGE_SUFFIXES
    if resize and is_image and len(shape) == 3 and shape[0] == x.shape[0]:
        from PIL import Image

        img = Image.fromarray(np.rint(x.transpose(1, 2, 0) * 255).astype(np.uint8))
        img = img.resize((shape[2], shape[1]))
        return np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 255.0
    if is_image and len(shape) == 3 and x.ndim == 3 and x.shape[0] == shape[0]:
        raise ValueError(f"{source} is {x.shape[2]}x{x.shape[1]} pixels, the served network expects "
                         f"{shape[2]}x{shape[1]} (shape {shape}); pass --resize to resize it")
    hint = " (--resize is for image files only)" if resize and not is_image else ""
    raise ValueError(f"{source} has shape {x.shape}, the served network expects {shape}{hint}")


def load_input(path: str | Path, shape: tuple[int, ...], *, resize: bool = False) -> np.ndarray:
    """An image for the plan: ``.npy`` (values in [0, 1], (C, H, W)) or
    ``.png``/``.jpg`` (see :func:`read_input` and :func:`fit_input`: one of
    another size is refused unless ``resize``).

    Raises:
        ValueError: unreadable file, bad values, or a shape that does not fit.
    """
    return fit_input(read_input(path), shape, resize=resize, source=path)


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

