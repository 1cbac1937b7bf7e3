"""``python -m pie.serve``: serve a network, query it, or run the embedded demo.

  python -m pie.serve demo
  python -m pie.serve server --model model.pt --port 7000
  python -m pie.serve client --connect 127.0.0.1:7000 --input image.png [--json]

The server sends its public Plan (architecture, shapes, scales, rings; no
weights) to each client, then both run the protocol; the client prints the
prediction and the latency/traffic of the offline and online phases.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from . import checkpoint, compiler
from .channel import Channel, ChannelError, TcpListener, tcp_connect
from .plan import Plan
from .protocol import Client, Server, infer
from .protocol import wire
from .reduce.data import CIFAR100_STATS, TINY_IMAGENET_STATS

__all__ = ["fetch_public_plan", "load_input", "load_server", "main", "serve_forever"]

_log = logging.getLogger("pie.serve")


def load_server(model: str | Path, arch: str | None = None, threads: int = 0) -> Server:
    """Load a checkpoint and compile it, folding the input normalisation that a
    pie checkpoint records (other checkpoints: the CIFAR-100 or TinyImageNet
    statistics the DeepReDuce releases were trained with, by input size)."""
    net = checkpoint.load_checkpoint(model, arch)
    meta = checkpoint.checkpoint_meta(model)
    size = net.config.input_size
    norm = meta.get("input_norm")
    if norm is None:
        mean, std = TINY_IMAGENET_STATS if size == 64 else CIFAR100_STATS
        norm = {"mean": list(mean), "std": list(std)}
    shape = tuple(meta.get("input_shape", (3, size, size)))
    plan = compiler.compile(net, shape, input_norm=(norm["mean"], norm["std"]))
    return Server(plan, threads=threads)


def _handle(server: Server, public: bytes, channel: Channel) -> None:
    wire.recv_json(channel, wire.GET_PLAN)
    channel.send_frame(wire.PUBLIC_PLAN, public)
    server.serve(channel)


def serve_forever(server: Server, listener: TcpListener, max_sessions: int = 4,
                  stop: threading.Event | None = None) -> None:
    """Accept clients until ``stop`` is set, each in its own thread, at most
    ``max_sessions`` at a time; a failing client is logged and never affects
    the others."""
    public = server.public_plan().to_bytes()
    slots = threading.BoundedSemaphore(max_sessions)
    stop = stop or threading.Event()

    def run(ch: Channel) -> None:
        try:
            _handle(server, public, ch)
        except (ChannelError, ValueError, RuntimeError) as exc:
            _log.warning("session failed: %s: %s", type(exc).__name__, exc)
        finally:
            ch.close()
            slots.release()

    while not stop.is_set():
        if not slots.acquire(timeout=0.2):
            continue
        try:
            ch = listener.accept(timeout=0.2)
        except ChannelError:
            slots.release()
            continue
        threading.Thread(target=run, args=(ch,), daemon=True).start()


def fetch_public_plan(channel: Channel) -> Plan:
    """Ask the server on ``channel`` for its public Plan."""
    wire.send_json(channel, wire.GET_PLAN, {})
    return Plan.from_bytes(channel.recv_frame(wire.PUBLIC_PLAN, wire.MAX_PLAN_BYTES))


def load_input(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """An image for the plan: ``.npy`` (values in [0, 1], (C, H, W)) or ``.png``/``.jpg``."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        x = np.load(path, allow_pickle=False).astype(np.float64)
    else:
        from PIL import Image

        with Image.open(path) as img:
            img = img.convert("RGB").resize((shape[2], shape[1]))
            x = np.asarray(img, dtype=np.float64).transpose(2, 0, 1) / 255.0
    if x.shape != tuple(shape):
        raise ValueError(f"{path} has shape {x.shape}, the served network expects {tuple(shape)}")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{path}: values must lie in [0, 1]")
    return x


def _summary(logits: np.ndarray, report: Any, classes: list[str] | None) -> str:
    k = int(np.argmax(logits))
    name = f" ({classes[k]})" if classes and k < len(classes) else ""
    return f"prediction: class {k}{name}\n\n{report.table()}"


def _demo(args: argparse.Namespace) -> int:
    files = resources.files("pie") / "data"
    with resources.as_file(files / "demo_model.pt") as model_path:
        server = load_server(model_path, threads=args.threads)
        classes = checkpoint.checkpoint_meta(model_path).get("classes")
    with resources.as_file(files / "demo_input.npy") as input_path:
        x = load_input(input_path, server.plan.input_shape)
    print(f"network: {server.plan.relu_count():,} ReLUs, {len(server.plan.steps)} steps")
    logits, report = infer(server.plan, x, threads=args.threads)
    reference = server.plan.run_reference(x)
    same = np.array_equal(logits, reference)
    print(_summary(logits, report, classes))
    print(f"\nsecure output equals the cleartext fixed-point reference: {'yes' if same else 'NO'}")
    return 0 if same else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pie.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="server and client in this process on the bundled model and image")
    demo.add_argument("--threads", type=int, default=0, help="garbling/evaluation threads (0: all cores)")
    srv = sub.add_parser("server", help="serve a checkpoint over TCP")
    srv.add_argument("--model", required=True, type=Path,
                     help="checkpoint: pie's format, or a DeepReDuce .pth.tar (then give --arch)")
    srv.add_argument("--arch", default=None, help="network name (see pie.models.names()) for checkpoints "
                     "that do not record their configuration")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=7000, help="TCP port (default 7000; 0 picks one)")
    srv.add_argument("--max-sessions", type=int, default=4, help="clients served at the same time")
    srv.add_argument("--threads", type=int, default=0, help="garbling threads per session (0: all cores)")
    cli = sub.add_parser("client", help="run one private inference against a server")
    cli.add_argument("--connect", required=True, metavar="HOST:PORT", help="the server's address")
    cli.add_argument("--input", required=True, type=Path, help="image: .npy (C,H,W in [0,1]) or .png/.jpg")
    cli.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    cli.add_argument("--timeout", type=float, default=10.0, help="connect timeout in seconds")
    cli.add_argument("--threads", type=int, default=0, help="evaluation threads (0: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    if args.command == "demo":
        return _demo(args)
    if args.command == "server":
        try:
            server = load_server(args.model, args.arch, args.threads)
        except (checkpoint.CheckpointError, compiler.CompileError, FileNotFoundError) as exc:
            parser.error(str(exc))
        listener = TcpListener(args.host, args.port)
        print(f"serving {args.model} ({server.plan.relu_count():,} ReLUs, plan {server.digest[:16]}) "
              f"on {args.host}:{listener.port}", flush=True)
        try:
            serve_forever(server, listener, args.max_sessions)
        except KeyboardInterrupt:
            pass
        return 0
    host, _, port = args.connect.rpartition(":")
    with tcp_connect(host, int(port), timeout=args.timeout) as channel:
        plan = fetch_public_plan(channel)
        x = load_input(args.input, plan.input_shape)
        logits, report = Client(plan, threads=args.threads).infer(channel, x, progress=not args.json)
    if args.json:
        print(json.dumps({"logits": logits.tolist(), "prediction": int(np.argmax(logits)),
                          "plan": plan.digest(), **report.totals()}))
    else:
        print(_summary(logits, report, None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
