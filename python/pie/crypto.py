"""Symmetric primitives of the native core.

- :class:`Aes128`: AES-128 (FIPS-197), AES-NI when the CPU has it (on 512-bit
  registers with VAES where AVX-512 is there too), otherwise OpenSSL
  (``backend="vaes"``, ``"aes-ni"`` or ``"openssl"`` forces one).
- :class:`Prg`: AES-CTR generator, OS-seeded unless given a 16-byte seed.
- :class:`TccrHash`: the tweakable circular correlation-robust hash of
  Guo-Katz-Wang-Yu (IEEE S&P 2020) used by garbling and OT extension.
- :func:`sha256`, :func:`secure_random`: OpenSSL's SHA-256 and CSPRNG.
"""

from __future__ import annotations

from ._native import core

Aes128 = core.Aes128
Prg = core.Prg
TccrHash = core.TccrHash
sha256 = core.sha256
secure_random = core.secure_random
aesni_available = core.aesni_available
vaes_available = core.vaes_available
aes_backends = core.aes_backends
default_aes_backend = core.default_aes_backend
openssl_version = core.openssl_version

__all__ = [
    "Aes128",
    "Prg",
    "TccrHash",
    "aes_backends",
    "aesni_available",
    "vaes_available",
    "default_aes_backend",
    "openssl_version",
    "secure_random",
    "sha256",
]
