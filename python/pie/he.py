"""Homomorphic encryption over Microsoft SEAL (BFV): the offline linear step.

The client holds a share ``x_c`` of a layer's input, the server holds the
layer's weights ``W``. After :func:`secure_conv2d` / :func:`secure_matmul`
the client holds ``W x_c - s`` and the server ``s`` (mod ``2^ring_bits``),
for a fresh uniform mask ``s`` -- the offline half of a Delphi-style linear
step, with Cheetah's coefficient encoding, seeded ciphertexts, noise flooding,
modulus switching and coefficient dropping (see ``cpp/he/params.h`` for the
parameters and the flooding bound).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ._native import core

if TYPE_CHECKING:
    from .channel import Channel

seal_version = core.seal_version
bfv_roundtrip = core.bfv_roundtrip

#: The largest plaintext modulus SEAL accepts is 2^59.
MAX_RING_BITS = 59


def he_parameters(
    ring_bits: int = 37,
    poly_degree: int = 8192,
    coeff_bits: list[int] | None = None,
    max_revealed: int = 1 << 30,
) -> dict[str, Any]:
    """Validate HE parameters (128-bit security, flooding room) and return the
    derived values: flood bits, largest noise bound, largest weight L1 norm per
    reply, moduli at the top and final levels.

    Raises:
        ValueError: naming the field (``poly_degree``, ``ring_bits``,
            ``coeff_bits``, ``max_revealed``).
    """
    return dict(core.he_parameters(ring_bits, poly_degree, coeff_bits, max_revealed))


def _check_ring(ring_bits: int) -> None:
    if not isinstance(ring_bits, (int, np.integer)) or not 2 <= int(ring_bits) <= MAX_RING_BITS:
        raise ValueError(f"ring_bits must be an integer in [2, {MAX_RING_BITS}], got {ring_bits!r}")


def _as_share(x: npt.ArrayLike, ndim: int, ring_bits: int) -> npt.NDArray[np.uint64]:
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"client_share must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype.kind not in "ui":
        raise ValueError(f"client_share must be an integer array, got {arr.dtype}")
    if arr.dtype.kind == "i" and arr.size and int(arr.min()) < 0:
        raise ValueError("client_share: values must be in [0, 2^ring_bits)")
    out = np.ascontiguousarray(arr, dtype=np.uint64)
    if out.size and int(out.max()) >> ring_bits:
        raise ValueError("client_share: values must be in [0, 2^ring_bits)")
    return out


def _as_weight(w: npt.ArrayLike, ndim: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(w)
    if arr.ndim != ndim:
        raise ValueError(f"weight must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ValueError(f"weight must be an integer array, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _conv_shape(
    in_shape: tuple[int, ...], weight_shape: tuple[int, ...], stride: int, padding: int, groups: int
) -> list[int]:
    """The native layer shape of a convolution, from the (public) input and weight shapes."""
    c, h, wd = in_shape
    o, cg, kh, kw = weight_shape
    if groups < 1 or c % groups or o % groups:
        raise ValueError(f"groups={groups} must divide the {c} input and {o} output channels")
    if cg * groups != c:
        raise ValueError(f"weight has {cg} input channels per group; the share has {c} channels and groups={groups}")
    return [c, h, wd, o, kh, kw, stride, padding, groups]


def _fc_shape(in_features: int, out_features: int) -> list[int]:
    """The native layer shape of a fully connected step (a 1x1 convolution)."""
    return [in_features, 1, 1, out_features, 1, 1, 1, 0, 1]


def _conv_inputs(
    client_share: npt.ArrayLike, weight: npt.ArrayLike, stride: int, padding: int, groups: int,
    ring_bits: int,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.int64], list[int]]:
    """Both parties' checked inputs of a one-process convolution and its native shape."""
    _check_ring(ring_bits)
    x = _as_share(client_share, 3, ring_bits)
    w = _as_weight(weight, 4)
    return x, w, _conv_shape(x.shape, w.shape, stride, padding, groups)


def secure_conv2d(
    client_share: npt.ArrayLike,
    weight: npt.ArrayLike,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    ring_bits: int = 37,
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], dict[str, Any]]:
    """Run the offline HE protocol of one convolution, both parties as threads
    over the in-memory channel.

    Args:
        client_share: ``(C, H, W)`` integers in ``[0, 2^ring_bits)`` (the client's share).
        weight: ``(O, C/groups, kh, kw)`` signed integers (the server's weights, taken mod ``2^ring_bits``).
        stride, padding, groups: as in ``torch.nn.Conv2d`` (zero padding).
        ring_bits: ``l``; shares live in ``Z_{2^l}``, ``2 <= l <= 59``.

    Returns:
        ``(client_out, server_mask, stats)``: two ``(O, Ho, Wo)`` uint64 arrays
        with ``client_out + server_mask = conv2d(client_share, weight) mod 2^l``,
        and a dict of bytes each way, message count and per-party times.

    Raises:
        ValueError: on shape mismatches, ``ring_bits`` out of range, values out
            of range, or weights whose L1 norm overflows the noise budget.
    """
    x, w, shape = _conv_inputs(client_share, weight, stride, padding, groups, ring_bits)
    out, mask, stats = core.secure_linear(x, w, shape, ring_bits)
    o, ho, wo = _out_dims(shape)
    return out.reshape(o, ho, wo), mask.reshape(o, ho, wo), dict(stats)


def _out_dims(shape: list[int]) -> tuple[int, int, int]:
    _, h, w, o, kh, kw, s, p, _ = shape
    return o, (h + 2 * p - kh) // s + 1, (w + 2 * p - kw) // s + 1


def secure_matmul(
    client_share: npt.ArrayLike, weight: npt.ArrayLike, ring_bits: int = 37
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64], dict[str, Any]]:
    """The offline HE protocol of a fully connected layer ``y = W x``.

    Args:
        client_share: ``(K,)`` integers in ``[0, 2^ring_bits)``.
        weight: ``(M, K)`` signed integers.
        ring_bits: ``l``, ``2 <= l <= 59``.

    Returns:
        ``(client_out, server_mask, stats)`` with ``(M,)`` arrays summing to
        ``W x mod 2^l``.

    Raises:
        ValueError: as :func:`secure_conv2d`.
    """
    _check_ring(ring_bits)
    x = _as_share(client_share, 1, ring_bits)
    w = _as_weight(weight, 2)
    if w.shape[1] != x.shape[0]:
        raise ValueError(f"weight has {w.shape[1]} columns but client_share has {x.shape[0]} values")
    m, k = w.shape
    out, mask, stats = core.secure_linear(x, w, _fc_shape(k, m), ring_bits)
    return out, mask, dict(stats)


class LinearClient:
    """Client half of an HE linear-layer session over a :class:`pie.channel.Channel`.

    Construction generates a fresh key pair and sends the seeded public key;
    every step then sends seeded secret-key ciphertexts of the client's share
    and decrypts ``W x - s``. The session refuses to reveal more than
    ``max_revealed`` coefficients (the flooding is sized for that many).
    The peer must be a :class:`LinearServer` with the same ``ring_bits``.
    """

    def __init__(self, channel: Channel, ring_bits: int = 37, max_revealed: int = 1 << 30) -> None:
        _check_ring(ring_bits)
        self.ring_bits = ring_bits
        self._party = core.HeLinearClient(channel, ring_bits, max_revealed)

    def conv2d(
        self,
        client_share: npt.ArrayLike,
        weight_shape: tuple[int, int, int, int],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> npt.NDArray[np.uint64]:
        """One convolution step: returns the client's share ``W x - s`` of shape (O, Ho, Wo)."""
        x, shape = self._conv_request(client_share, weight_shape, stride, padding, groups)
        return np.asarray(self._party.run(x, shape)).reshape(_out_dims(shape))

    def matmul(self, client_share: npt.ArrayLike, out_features: int) -> npt.NDArray[np.uint64]:
        """One fully connected step ``y = W x`` with ``W`` of shape (out_features, len(x))."""
        return np.asarray(self._party.run(*self._fc_request(client_share, out_features)))

    def _conv_request(self, client_share: npt.ArrayLike, weight_shape: tuple[int, int, int, int],
                      stride: int, padding: int, groups: int) -> tuple[np.ndarray, list[int]]:
        x = _as_share(client_share, 3, self.ring_bits)
        return x, _conv_shape(x.shape, weight_shape, stride, padding, groups)

    def _fc_request(self, client_share: npt.ArrayLike, out_features: int) -> tuple[np.ndarray, list[int]]:
        x = _as_share(client_share, 1, self.ring_bits)
        return x, _fc_shape(x.shape[0], out_features)

    def send_conv2d(
        self,
        client_share: npt.ArrayLike,
        weight_shape: tuple[int, int, int, int],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> None:
        """First half of :meth:`conv2d`: encrypt and send the share. Several steps
        may be sent before :meth:`receive` returns their results, in the order sent."""
        self._party.send(*self._conv_request(client_share, weight_shape, stride, padding, groups))

    def send_matmul(self, client_share: npt.ArrayLike, out_features: int) -> None:
        """First half of :meth:`matmul` (see :meth:`send_conv2d`)."""
        self._party.send(*self._fc_request(client_share, out_features))

    def receive(self) -> npt.NDArray[np.uint64]:
        """Second half: the client's share ``W x - s`` of the oldest step sent and
        not yet received, flat (conv outputs in (O, Ho, Wo) order)."""
        return np.asarray(self._party.receive())

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent encrypting and decrypting in the last step."""
        return dict(self._party.timings)


class LinearServer:
    """Server half of an HE linear-layer session (see :class:`LinearClient`).

    Construction receives the client's public key; every step returns the
    server's share ``s`` (a fresh uniform mask) of the layer's output.
    """

    def __init__(self, channel: Channel, ring_bits: int = 37, max_revealed: int = 1 << 30) -> None:
        _check_ring(ring_bits)
        self.ring_bits = ring_bits
        self._party = core.HeLinearServer(channel, ring_bits, max_revealed)

    def conv2d(
        self,
        in_shape: tuple[int, int, int],
        weight: npt.ArrayLike,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> npt.NDArray[np.uint64]:
        """One convolution step on an input of (public) shape (C, H, W): returns ``s``."""
        w = _as_weight(weight, 4)
        shape = _conv_shape(in_shape, w.shape, stride, padding, groups)
        return np.asarray(self._party.run(w, shape)).reshape(_out_dims(shape))

    def matmul(self, weight: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """One fully connected step with weights of shape (M, K): returns ``s`` of shape (M,)."""
        w = _as_weight(weight, 2)
        m, k = w.shape
        return np.asarray(self._party.run(w, _fc_shape(k, m)))

    def receive_conv2d(
        self,
        in_shape: tuple[int, int, int],
        weight_shape: tuple[int, int, int, int],
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
    ) -> core.HeLinearInputs:
        """First half of :meth:`conv2d`: receive the step's input ciphertexts,
        held as received until :meth:`reply`."""
        return self._party.receive(_conv_shape(in_shape, weight_shape, stride, padding, groups))

    def receive_matmul(self, weight_shape: tuple[int, int]) -> core.HeLinearInputs:
        """First half of :meth:`matmul` (see :meth:`receive_conv2d`)."""
        m, k = weight_shape
        return self._party.receive(_fc_shape(k, m))

    def reply(self, inputs: core.HeLinearInputs, weight: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """Second half: compute and send the replies to ``inputs``; returns the
        server's mask ``s``, flat (conv outputs in (O, Ho, Wo) order)."""
        w = _as_weight(weight, np.ndim(weight))
        return np.asarray(self._party.reply(inputs, w))

    @property
    def timings(self) -> dict[str, float]:
        """Seconds spent computing the last step's replies."""
        return dict(self._party.timings)


def layout(
    in_shape: tuple[int, int, int],
    weight_shape: tuple[int, int, int, int],
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> dict[str, int]:
    """The coefficient-encoding plan of a convolution: client ciphertexts,
    replies, plaintext products, channels and outputs per polynomial."""
    c, h, w = in_shape
    o, _, kh, kw = weight_shape
    return dict(core.he_layout([c, h, w, o, kh, kw, stride, padding, groups]))


def inspect_linear(
    client_share: npt.ArrayLike,
    weight: npt.ArrayLike,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    ring_bits: int = 37,
    trials: int = 0,
    max_revealed: int = 1 << 30,
) -> dict[str, Any]:
    """Run one convolution's kernels with the client's secret key in hand (no
    channel) and return what tests and auditors inspect: SEAL serialisations
    (``parms``, ``secret_key``, ``reply``: reply 0 after flooding and modulus
    switching, before coefficient dropping), ``expected`` (the N coefficients
    it must decrypt to), ``decrypted``, ``output_coeffs``, ``noise`` (the full
    top-level noise over the flooding half-width), ``unflooded_noise_log2``
    (log2 of the largest |noise| of max(trials, 1) fresh replies before
    flooding, to hold against ``noise_bound_log2``, the bound B the flood is
    sized for), ``product_c1_over_a_log2`` / ``reply_c1_over_a_log2`` and, of
    ``trials`` fresh replies, ``failures``."""
    x, w, shape = _conv_inputs(client_share, weight, stride, padding, groups, ring_bits)
    return dict(core.inspect_linear(x, w, shape, ring_bits, trials, max_revealed))


def export_for_inspection(
    folder: str | Path,
    client_share: npt.ArrayLike,
    weight: npt.ArrayLike,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
    ring_bits: int = 37,
) -> Path:
    """Write ``parms.bin``, ``secret_key.bin``, ``reply.bin`` (SEAL native
    serialisation, compression off) and ``expected.npy`` (uint64, the N
    plaintext coefficients the reply decrypts to) for one convolution, so an
    independent SEAL build can check a server reply. Returns the folder."""
    rec = inspect_linear(client_share, weight, stride, padding, groups, ring_bits)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    (path / "parms.bin").write_bytes(rec["parms"])
    (path / "secret_key.bin").write_bytes(rec["secret_key"])
    (path / "reply.bin").write_bytes(rec["reply"])
    np.save(path / "expected.npy", rec["expected"])
    return path


__all__ = [
    "MAX_RING_BITS",
    "LinearClient",
    "LinearServer",
    "bfv_roundtrip",
    "export_for_inspection",
    "he_parameters",
    "inspect_linear",
    "layout",
    "seal_version",
    "secure_conv2d",
    "secure_matmul",
]
