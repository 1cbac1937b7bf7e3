"""Checks that the native build works on this machine (``python -m pie selftest``)."""

from __future__ import annotations

import secrets
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from . import channel, crypto, he
from ._native import core

# FIPS-197 appendix C.1 and FIPS 180-2 appendix B.1 known answers.
AES_KAT_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
AES_KAT_PLAIN = bytes.fromhex("00112233445566778899aabbccddeeff")
AES_KAT_CIPHER = bytes.fromhex("69c4e0d86a7b0430d8cdb78070b4c55a")
SHA256_KAT_MSG = b"abc"
SHA256_KAT_DIGEST = bytes.fromhex(
    "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
)


@dataclass
class Check:
    """One self-test item: its name, whether it passed and what it found."""

    name: str
    ok: bool
    detail: str
    seconds: float = 0.0


@dataclass
class SelfTestReport:
    """All checks of a self-test run; ``ok`` is true only if every check passed."""

    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def to_dict(self) -> dict:
        return {"ok": self.ok, "checks": [asdict(c) for c in self.checks]}

    def table(self) -> str:
        width = max(len(c.name) for c in self.checks)
        lines = [
            f"{'PASS' if c.ok else 'FAIL'}  {c.name:<{width}}  {c.detail}" for c in self.checks
        ]
        lines.append("selftest: " + ("all checks passed" if self.ok else "FAILED"))
        return "\n".join(lines)


def _aes_path() -> str:
    backend = crypto.default_aes_backend()
    if backend == "vaes":
        return "vaes (hardware AES instructions on 512-bit registers)"
    if backend == "aes-ni":
        return "aes-ni (hardware AES instructions)"
    return "openssl (portable fallback: this CPU or build has no AES-NI path)"


def _aes_kat() -> str:
    for backend in crypto.aes_backends():
        got = crypto.Aes128(AES_KAT_KEY, backend=backend).encrypt(AES_KAT_PLAIN)
        if got != AES_KAT_CIPHER:
            raise AssertionError(f"{backend}: FIPS-197 C.1 gave {got.hex()}")
    return "FIPS-197 C.1 on " + ", ".join(crypto.aes_backends())


def _sha256_kat() -> str:
    got = crypto.sha256(SHA256_KAT_MSG)
    if got != SHA256_KAT_DIGEST:
        raise AssertionError(f"SHA-256('abc') gave {got.hex()}")
    return "SHA-256('abc') matches FIPS 180-2"


def _tccr() -> str:
    # H(x, i) = pi(pi(x) ^ i) ^ pi(x) recomputed from the AES primitive.
    x, i = secrets.token_bytes(16), secrets.token_bytes(16)
    pi = crypto.Aes128(crypto.TccrHash.fixed_key())
    y = pi.encrypt(x)
    z = pi.encrypt(bytes(a ^ b for a, b in zip(y, i)))
    want = bytes(a ^ b for a, b in zip(y, z))
    if crypto.TccrHash().hash(x, i) != want:
        raise AssertionError("TCCR hash disagrees with its definition over AES")
    return "H(x,i) = pi(pi(x)^i)^pi(x) over fixed-key AES"


def _seal() -> str:
    bits, n = 37, 8192
    coeffs = [secrets.randbelow(1 << bits) for _ in range(n)]
    if he.bfv_roundtrip(coeffs, plain_bits=bits, poly_degree=n) != coeffs:
        raise AssertionError("BFV round trip returned different coefficients")
    return f"SEAL {he.seal_version()} BFV round trip (N={n}, t=2^{bits})"


def _openssl() -> str:
    if len(crypto.secure_random(32)) != 32:
        raise AssertionError("secure_random returned a short buffer")
    return crypto.openssl_version()


def _channel() -> str:
    a, b = channel.memory_pair()
    payload = secrets.token_bytes(1 << 16)
    a.send(payload)
    a.flush()
    if b.recv(len(payload)) != payload or a.bytes_sent != b.bytes_received:
        raise AssertionError("in-memory channel corrupted or miscounted a message")
    return "in-memory channel round trip"


CHECKS: list[tuple[str, Callable[[], str]]] = [
    ("native extension", lambda: f"pie._core {core.__version__}"),
    ("AES path", _aes_path),
    ("AES known answer", _aes_kat),
    ("SHA-256 known answer", _sha256_kat),
    ("TCCR hash", _tccr),
    ("OpenSSL", _openssl),
    ("SEAL", _seal),
    ("channel", _channel),
]


def run_selftest() -> SelfTestReport:
    """Run every check; failures are recorded in the report, never raised."""
    report = SelfTestReport()
    for name, fn in CHECKS:
        start = time.perf_counter()
        try:
            detail, ok = fn(), True
        except Exception as exc:  # a failing check must not hide the others
            detail, ok = f"{type(exc).__name__}: {exc}", False
        report.checks.append(Check(name, ok, detail, time.perf_counter() - start))
    return report


__all__ = ["Check", "SelfTestReport", "run_selftest"]
