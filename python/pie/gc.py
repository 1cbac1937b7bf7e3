"""Garbled circuits and oblivious transfer (the ReLU engine of pie).

- :class:`Circuit`: Boolean circuits (XOR/AND/INV), loaded from Bristol Fashion
  files (:meth:`Circuit.from_bristol`), built with :class:`CircuitBuilder`, or
  the ReLU-over-shares circuit (:func:`relu_circuit`); cleartext
  :meth:`Circuit.evaluate`.
- :func:`run_two_party`: garble, OT and evaluate one circuit between two
  threads over the in-memory channel.
- :func:`secure_relu`: the full offline + online ReLU protocol over shares.
- Protocol classes for use over any :class:`pie.Channel`: :class:`ReluServer`,
  :class:`ReluClient` (offline material is consumable once), the label-only
  output :class:`ArgmaxServer` / :class:`ArgmaxClient` (the client learns the
  index of the largest logit only, :func:`argmax_circuit`), the OT layers
  :class:`IknpSender` / :class:`IknpReceiver` and :func:`base_ot_send` /
  :func:`base_ot_receive`, and the pure half-gates functions :func:`garble` /
  :func:`evaluate_garbled`.

Schemes: half-gates garbling (Zahur-Rosulek-Evans 2015) with the fixed-key AES
hash of Guo-Katz-Wang-Yu 2020; Chou-Orlandi base OT on P-256; IKNP OT
extension (semi-honest). 128-bit computational security.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._native import core
from .channel import memory_pair

CircuitBuilder = core.GcCircuitBuilder
ReluServer = core.GcReluServer
ArgmaxServer = core.GcArgmaxServer
ArgmaxClient = core.GcArgmaxClient
ReluClient = core.GcReluClient
ReluServerMaterial = core.GcReluServerMaterial
ReluClientMaterial = core.GcReluClientMaterial
IknpSender = core.IknpSender
IknpReceiver = core.IknpReceiver
base_ot_send = core.base_ot_send
base_ot_receive = core.base_ot_receive


def _to_bytes(value: int, width: int, field: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{field}: expected an int, got {type(value).__name__}")
    if value < 0 or value >> width:
        raise ValueError(f"{field}: {value} does not fit in {width} bits")
    return value.to_bytes((width + 7) // 8, "little")


class Circuit:
    """A Boolean circuit over XOR, AND and INV gates.

    Input ``k`` is an int whose bit ``i`` feeds wire ``i`` of that input;
    outputs are ints read the same way.
    """

    def __init__(self, native: core.GcCircuit) -> None:
        self._native = native

    @classmethod
    def from_bristol(cls, path: str | os.PathLike[str]) -> Circuit:
        """Load a Bristol Fashion file; a malformed file raises ``ValueError``
        naming the file and line."""
        return cls(core.GcCircuit.from_bristol(os.fspath(path)))

    @classmethod
    def from_bristol_text(cls, text: str, name: str = "<text>") -> Circuit:
        """Parse Bristol Fashion text (errors read ``<name>:<line>: ...``)."""
        return cls(core.GcCircuit.from_bristol_text(text, name))

    @classmethod
    def from_builder(cls, builder: core.GcCircuitBuilder) -> Circuit:
        """Finish a :class:`CircuitBuilder` into a circuit."""
        return cls(builder.build())

    @property
    def native(self) -> core.GcCircuit:
        """The underlying native circuit."""
        return self._native

    @property
    def input_widths(self) -> list[int]:
        """Bit width of each input, in order."""
        return list(self._native.input_widths)

    @property
    def output_widths(self) -> list[int]:
        """Bit width of each output, in order."""
        return list(self._native.output_widths)

    @property
    def num_and(self) -> int:
        """Number of AND gates (the cost of garbling: 32 bytes each)."""
        return int(self._native.num_and)

    @property
    def num_gates(self) -> int:
        """Number of gates of all kinds."""
        return int(self._native.num_gates)

    def _pack(self, inputs: Sequence[int]) -> list[bytes]:
        widths = self.input_widths
        if len(inputs) != len(widths):
            raise ValueError(f"inputs: expected {len(widths)} values, got {len(inputs)}")
        return [_to_bytes(v, w, f"inputs[{k}]") for k, (v, w) in enumerate(zip(inputs, widths))]

    def evaluate(self, inputs: Sequence[int]) -> list[int]:
        """Evaluate in the clear; returns one int per output."""
        return [int.from_bytes(b, "little") for b in self._native.evaluate(self._pack(inputs))]

    def __repr__(self) -> str:
        return (
            f"Circuit(inputs={self.input_widths}, outputs={self.output_widths}, "
            f"gates={self.num_gates}, and={self.num_and})"
        )


def relu_circuit(l_in: int, l_out: int, shift: int) -> Circuit:
    """The ReLU over additive shares.

    Inputs: 0 = server share of x (``l_in`` bits), 1 = client share of x
    (``l_in`` bits), 2 = client mask r (``l_out`` bits). Output:
    ``(ReLU(x as signed) >> shift) - r mod 2^l_out`` with
    ``x = x_s + x_c mod 2^l_in``; at most ``l_in + 2*l_out`` AND gates.
    """
    return Circuit(core.gc_relu_circuit(l_in, l_out, shift))


def truncate_circuit(l_in: int, l_out: int, shift: int) -> Circuit:
    """The truncation over additive shares (the Plan's truncate steps).

    Same inputs as :func:`relu_circuit`; output
    ``((x as signed) >> shift) - r mod 2^l_out``, ``(l_in - 1) + (l_out - 1)``
    AND gates (the shift is wiring).
    """
    return Circuit(core.gc_truncate_circuit(l_in, l_out, shift))


def argmax_circuit(classes: int, l: int) -> Circuit:
    """The label-only output over additive shares.

    Inputs: the server's shares of ``classes`` values of ``l`` bits (value j on
    bits ``j*l ..``), then the client's; output: the index (``ceil(log2
    classes)`` bits, at least 1) of the largest ``x_s + x_c mod 2^l`` as a
    signed value, the lowest among equal maxima (as :func:`numpy.argmax`).
    """
    return Circuit(core.gc_argmax_circuit(classes, l))


def run_two_party(
    circuit: Circuit,
    garbler_inputs: Mapping[int, int],
    evaluator_inputs: Mapping[int, int],
    threads: int = 0,
) -> tuple[list[int], dict[str, int]]:
    """Garble ``circuit`` in one thread and evaluate it in another.

    Each dict maps input index to value; together they must cover every input
    exactly once. The evaluator's inputs travel by OT extension; the evaluator
    returns the colour bits of the outputs and the garbler decodes them.
    Returns the outputs and stats (``and_gates``, ``bytes_garbler_to_evaluator``,
    ``bytes_evaluator_to_garbler``, ``table_bytes``).
    """
    n = len(circuit.input_widths)
    both = set(garbler_inputs) & set(evaluator_inputs)
    if both:
        raise ValueError(f"inputs {sorted(both)} are given to both parties")
    missing = set(range(n)) - set(garbler_inputs) - set(evaluator_inputs)
    extra = (set(garbler_inputs) | set(evaluator_inputs)) - set(range(n))
    if missing or extra:
        raise ValueError(f"inputs: missing {sorted(missing)}, unknown {sorted(extra)}")
    values = [garbler_inputs[k] if k in garbler_inputs else evaluator_inputs[k] for k in range(n)]
    owns = [k in evaluator_inputs for k in range(n)]
    packed = circuit._pack(values)
    outs, stats = core.gc_run_two_party(circuit.native, owns, packed, threads)
    return [int.from_bytes(b, "little") for b in outs], dict(stats)


def _as_ring(values: Any, bits: int, field: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{field}: must be one-dimensional")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{field}: expected integers, got dtype {arr.dtype}")
    if arr.size and (arr.dtype.kind == "i" and int(arr.min()) < 0):
        raise ValueError(f"{field}: values must be non-negative ring elements")
    out = np.ascontiguousarray(arr, dtype=np.uint64)
    if bits < 64 and out.size and int(out.max()) >> bits:
        raise ValueError(f"{field}: values must be below 2^{bits}")
    return out


def secure_truncate(
    server_share: Any,
    client_share: Any,
    client_mask: Any,
    l_in: int,
    l_out: int,
    shift: int,
    threads: int = 0,
    batch_size: int = 1 << 15,
) -> tuple[np.ndarray, dict[str, Any]]:
    """As :func:`secure_relu` for :func:`truncate_circuit`: the server shares of
    ``((x as signed) >> shift) - client_mask mod 2^l_out``."""
    return secure_relu(server_share, client_share, client_mask, l_in, l_out, shift, threads,
                       batch_size, truncate=True)


def secure_relu(
    server_share: Any,
    client_share: Any,
    client_mask: Any,
    l_in: int,
    l_out: int,
    shift: int,
    threads: int = 0,
    batch_size: int = 1 << 15,
    *,
    truncate: bool = False,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the ReLU protocol (offline then online) between two threads.

    ``x = server_share + client_share mod 2^l_in`` is read as a signed
    ``l_in``-bit value; the client's output share is ``client_mask`` (< 2^l_out)
    and the returned server shares are ``(ReLU(x) >> shift) - client_mask
    mod 2^l_out`` (uint64). The elements are processed in batches of
    ``batch_size`` (each an offline phase followed by its online phase), which
    bounds the memory of both parties. ``truncate=True`` runs
    :func:`truncate_circuit` instead (see :func:`secure_truncate`). Stats: ``relus``, ``batches``,
    ``and_gates_per_relu``, ``garbled_bytes_per_relu``, ``offline_bytes``,
    ``online_bytes_server_to_client``, ``online_bytes_client_to_server``.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    xs = _as_ring(server_share, l_in, "server_share")
    xc = _as_ring(client_share, l_in, "client_share")
    r = _as_ring(client_mask, l_out, "client_mask")
    if not (xs.shape == xc.shape == r.shape):
        raise ValueError("server_share, client_share, client_mask: lengths differ")
    starts = range(0, len(xs), batch_size)
    server_end, client_end = memory_pair()
    server = ReluServer(server_end, l_in, l_out, shift, threads, truncate=truncate)
    client = ReluClient(client_end, l_in, l_out, shift, threads, truncate=truncate)
    failure: list[BaseException] = []
    table_bytes = [0]

    def client_side() -> None:
        try:
            for s in starts:
                material = client.offline(xc[s : s + batch_size], r[s : s + batch_size])
                table_bytes[0] += material.table_bytes
                client.online(material)
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)
            client_end.close()

    worker = threading.Thread(target=client_side, name="pie-gc-client")
    worker.start()
    ys = np.empty(len(xs), dtype=np.uint64)
    offline = online_sent = online_received = 0
    try:
        for s in starts:
            before_sent, before_received = server_end.bytes_sent, server_end.bytes_received
            material = server.offline(len(xs[s : s + batch_size]))
            mid_sent, mid_received = server_end.bytes_sent, server_end.bytes_received
            ys[s : s + batch_size] = server.online(material, xs[s : s + batch_size])
            offline += mid_sent - before_sent + mid_received - before_received
            online_sent += server_end.bytes_sent - mid_sent
            online_received += server_end.bytes_received - mid_received
    except BaseException:
        server_end.close()
        worker.join()
        if failure:
            raise failure[0] from None
        raise
    worker.join()
    if failure:
        raise failure[0]
    stats = {
        "relus": len(xs),
        "batches": len(starts),
        "and_gates_per_relu": server.num_and,
        "garbled_bytes_per_relu": table_bytes[0] / max(len(xs), 1),
        "offline_bytes": offline,
        "online_bytes_server_to_client": online_sent,
        "online_bytes_client_to_server": online_received,
    }
    return ys, stats


def worker_threads(requested: int = 0) -> int:
    """Threads the engine runs for a requested count (0 = all cores; 1 when
    the build has no OpenMP)."""
    return int(core.gc_threads(requested))


def kernel_seconds(
    circuit: Circuit, n: int, threads: int = 0, repeat: int = 1, mode: str = "garble", block: int = 0,
    backend: str | None = None,
) -> float:
    """Benchmark helper: wall-clock seconds to ``mode`` = "garble" or
    "evaluate" ``n`` instances ``repeat`` times with the engine's parallel
    kernels (no I/O, setup excluded), or ("hash") to run the ``2 * num_and * n``
    TCCR hash calls an evaluation needs, batched the same way, on one thread.
    ``backend`` picks the AES as for :func:`garble` (default: the engine's)."""
    return float(core.gc_throughput(circuit.native, n, threads, repeat, mode, block, backend))


def garble(
    circuit: Circuit,
    n: int,
    tweak_base: int,
    delta: bytes | None = None,
    seed: bytes | None = None,
    backend: str | None = None,
    tweak_prefix: int = 0,
) -> dict[str, bytes]:
    """Garble ``n`` instances (the pure half-gates function, for tests and tools).

    Input 0-labels come from the OS-seeded PRG, or from ``seed`` (16 bytes) for
    reproducible runs; ``backend`` picks the hash's AES ("vaes" or "aes-ni",
    the fused kernels, or "openssl", the portable path). Returns bytes ``delta``,
    ``input_zero`` ([n][inputs] 16-byte 0-labels), ``tables`` ([AND][n][2]),
    ``output_zero`` and ``wire_labels`` ([wire][n]).
    """
    return dict(core.gc_garble(circuit.native, n, tweak_base, delta, seed, backend, tweak_prefix))


def evaluate_garbled(
    circuit: Circuit,
    n: int,
    tweak_base: int,
    input_labels: bytes,
    tables: bytes,
    backend: str | None = None,
    tweak_prefix: int = 0,
) -> dict[str, bytes]:
    """Evaluate ``n`` garbled instances from one label per input wire (under
    the garbling's ``tweak_prefix`` and ``tweak_base``); returns bytes
    ``outputs`` ([n][outputs]) and ``wire_labels`` ([wire][n])."""
    return dict(core.gc_evaluate(circuit.native, n, tweak_base, input_labels, tables, backend, tweak_prefix))


__all__ = [
    "ArgmaxClient",
    "ArgmaxServer",
    "Circuit",
    "CircuitBuilder",
    "IknpReceiver",
    "IknpSender",
    "ReluClient",
    "ReluClientMaterial",
    "ReluServer",
    "ReluServerMaterial",
    "base_ot_receive",
    "base_ot_send",
    "evaluate_garbled",
    "garble",
    "kernel_seconds",
    "argmax_circuit",
    "relu_circuit",
    "run_two_party",
    "secure_relu",
    "secure_truncate",
    "truncate_circuit",
    "worker_threads",
]
