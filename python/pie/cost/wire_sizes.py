"""Exact byte counts of the engine's messages: wire constants, per-step traffic, sizes measured from the code.

Traffic (exact, deterministic):

* garbled steps: 32 bytes of half-gates table per AND gate, the IKNP
  correlated-OT matrix for the client's ``l_in + l_out`` input bits per element,
  16-byte labels of the server's ``l_in`` bits online and ``l_out`` colour
  bits back, the framing of every batch, and one base-OT set-up per circuit
  shape (on its first step);
* linear steps: per conv/fc term one frame of seeded input ciphertexts
  (their count from the layout, their serialised size from SEAL) and one frame
  of replies (``c1`` in full plus ``c0`` at the output coefficients, in the
  final RNS limbs); scale terms are free;
* per session: the public key of every HE ring, the masked input, the output
  share, and the session-level frames (handshake and any other fixed-size
  control frame). The sizes that depend on SEAL's serialisation and the
  session-level frames are measured once per process from the implementation
  itself (a key generation, a one-ciphertext layer, and one inference of a
  tiny plan, in :mod:`pie.cost.predict`) rather than written down here, so
  they follow the protocol.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

from .. import gc, he
from ..channel import memory_pair
from ..plan import ConvTerm, FCTerm, LinearStep, OutputStep, Plan

# Wire constants of the native engine (cpp/io/channel.h, cpp/gc, cpp/ot).
FRAME_HEADER_BYTES = 12  # Channel::kFrameHeaderBytes: type (4) + length (8)
LABEL_BYTES = 16  # one 128-bit wire label
TABLE_BYTES_PER_AND = 2 * LABEL_BYTES  # half-gates: two ciphertexts per AND gate
GC_IDS_BYTES = 16  # ReLU batch frames (offline, online): batch id and size
GC_BATCH_HEADER_BYTES = 40  # garbled batch header: tweak prefix, base, n, AND gates, block
IKNP_KAPPA = 128  # base OTs, i.e. rows of the IKNP matrix
IKNP_CHUNK = 1 << 17  # OTs extended per IKNP message
HE_COUNT_BYTES = 8  # u64 ciphertext count, and u64 length before each ciphertext
RESIDUE_BYTES = 8  # one RNS residue of a reply on the wire
SHARE_BYTES = 8  # one uint64 share (masked input, output share)

# The per-direction byte counts of a step (pie.protocol.report.StepFigures).
BYTE_KEYS = ("offline_bytes_c2s", "offline_bytes_s2c", "online_bytes_c2s", "online_bytes_s2c")


@functools.cache
def _circuit(l_in: int, l_out: int, shift: int, truncate: bool) -> gc.Circuit:
    """The circuit the engine garbles for one element."""
    return (gc.truncate_circuit if truncate else gc.relu_circuit)(l_in, l_out, shift)


def and_gates(l_in: int, l_out: int, shift: int, truncate: bool) -> int:
    """AND gates per element (the builder drops gates whose outputs the
    shift discards, so this can be below :func:`pie.plan.relu_and_gates`)."""
    return _circuit(l_in, l_out, shift, truncate).num_and


def other_gates(l_in: int, l_out: int, shift: int, truncate: bool) -> int:
    """XOR and INV gates per element: free of hashing, not of time."""
    c = _circuit(l_in, l_out, shift, truncate)
    return c.num_gates - c.num_and


def term_layout(plan: Plan, term: ConvTerm | FCTerm) -> dict[str, int]:
    """The HE coefficient-encoding layout of one conv/fc term (:func:`pie.he.layout`)."""
    src = plan.tensors[term.input]
    if isinstance(term, ConvTerm):
        return he.layout(src.shape, term.weight_shape, term.stride[0], term.padding[0], term.groups)  # type: ignore[arg-type]
    m, k = term.weight_shape
    return he.layout((k, 1, 1), (m, k, 1, 1))


def he_term_bytes(plan: Plan, step: LinearStep, bits: int, lay: dict[str, int],
                  max_revealed: int) -> tuple[int, int]:
    """Bytes (client to server, server to client) of one HE conv/fc term whose
    product ring is ``bits``."""
    params = he.he_parameters(bits, max_revealed=max_revealed)
    ct = _he_input_ciphertext_bytes(bits)
    c2s = FRAME_HEADER_BYTES + HE_COUNT_BYTES + lay["num_inputs"] * (HE_COUNT_BYTES + ct)
    # Each reply: c1 in full and c0 at its output coefficients, in the final
    # limbs; every output element sits in exactly one reply coefficient.
    coeffs = lay["num_outputs"] * params["poly_degree"] + plan.tensors[step.output].numel
    s2c = FRAME_HEADER_BYTES + RESIDUE_BYTES * params["final_limbs"] * coeffs
    return c2s, s2c


def _iknp_matrix_bytes(n: int) -> int:
    """Bytes of the IKNP matrix the receiver sends for n correlated OTs."""
    full, rest = divmod(n, IKNP_CHUNK)
    chunks = [IKNP_CHUNK] * full + ([rest] if rest else [])
    return sum(IKNP_KAPPA * (-(-c // 128) * 128) // 8 for c in chunks)


def gc_step_bytes(n: int, l_in: int, l_out: int, gates: int, first: bool,
                  frames: dict[str, int]) -> tuple[int, int, int, int]:
    """(offline c2s, offline s2c, online c2s, online s2c) of one garbled step."""
    off_c2s = _iknp_matrix_bytes(n * (l_in + l_out))
    off_s2c = (FRAME_HEADER_BYTES + GC_IDS_BYTES + FRAME_HEADER_BYTES + GC_BATCH_HEADER_BYTES
               + TABLE_BYTES_PER_AND * gates * n)
    if first:  # the IKNP instance of this circuit shape runs its base OTs
        off_c2s += frames["base_ot_c2s"]
        off_s2c += frames["base_ot_s2c"]
    on_s2c = FRAME_HEADER_BYTES + GC_IDS_BYTES + LABEL_BYTES * l_in * n
    on_c2s = -(-n * l_out // 8)
    return off_c2s, off_s2c, on_c2s, on_s2c


def argmax_bytes(numel: int, bits: int, circuit: gc.Circuit, frames: dict[str, int]) -> tuple[int, int, int]:
    """(offline c2s, offline s2c, online s2c) of the garbled argmax output: one
    instance with its own base OTs, its tables, the OT of the client's share and
    the decoding bits offline; the server's labels online."""
    off_c2s = _iknp_matrix_bytes(numel * bits) + frames["base_ot_c2s"]
    off_s2c = (FRAME_HEADER_BYTES + GC_BATCH_HEADER_BYTES + TABLE_BYTES_PER_AND * circuit.num_and
               + FRAME_HEADER_BYTES + -(-circuit.output_widths[0] // 8) + frames["base_ot_s2c"])
    on_s2c = 2 * FRAME_HEADER_BYTES + LABEL_BYTES * numel * bits
    return off_c2s, off_s2c, on_s2c


def share_bytes(numel: int) -> int:
    """One frame of ``numel`` shares (the masked input, the output share)."""
    return FRAME_HEADER_BYTES + SHARE_BYTES * numel


@functools.cache
def he_hello_bytes(bits: int) -> int:
    """The HE session set-up frame (parameters id and seeded public key)."""
    a, _b = memory_pair()
    he.LinearClient(a, bits)
    return int(a.bytes_sent)


@functools.cache
def _he_input_ciphertext_bytes(bits: int) -> int:
    """Serialised size of one seeded input ciphertext (a one-ciphertext layer)."""
    x = np.zeros((1, 1, 1), dtype=np.uint64)
    w = np.ones((1, 1, 1, 1), dtype=np.int64)
    _, _, stats = he.secure_conv2d(x, w, ring_bits=bits)
    if stats["num_input_ciphertexts"] != 1:
        raise RuntimeError("a 1x1 layer should need one input ciphertext")
    return int(stats["bytes_client_to_server"]) - he_hello_bytes(bits) - FRAME_HEADER_BYTES - 2 * HE_COUNT_BYTES


@functools.lru_cache(maxsize=1)
def base_ot_bytes() -> tuple[int, int]:
    """(receiver to sender, sender to receiver) bytes of an IKNP set-up: the
    base-OT session id and the Chou-Orlandi messages."""
    a, b = memory_pair()
    sender, receiver = gc.IknpSender(a), gc.IknpReceiver(b)
    worker = threading.Thread(target=receiver.recv_cot, args=(bytes([0]),))
    worker.start()
    sender.send_cot(1)
    worker.join()
    return int(b.bytes_sent) - _iknp_matrix_bytes(1), int(b.bytes_received)


def frame_positions(plan: Plan) -> dict[str, int]:
    """Steps that carry session-level frames: the first step, the last step
    before the output and the output step."""
    out = plan.steps.index(plan.output)
    last = max((i for i, s in enumerate(plan.steps) if not isinstance(s, OutputStep)), default=0)
    return {"first": 0, "last": last, "output": out}
