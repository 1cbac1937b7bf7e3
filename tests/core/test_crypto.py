"""Known-answer and property tests of the native crypto primitives."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

import pie
from pie import crypto

BACKENDS = crypto.aes_backends()

# FIPS-197 appendix B and appendix C.1.
AES_VECTORS = [
    (
        "2b7e151628aed2a6abf7158809cf4f3c",
        "3243f6a8885a308d313198a2e0370734",
        "3925841d02dc09fbdc118597196a0b32",
    ),
    (
        "000102030405060708090a0b0c0d0e0f",
        "00112233445566778899aabbccddeeff",
        "69c4e0d86a7b0430d8cdb78070b4c55a",
    ),
]

# FIPS 180-2 appendix B.
SHA256_VECTORS = [
    (b"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
    ),
    (b"a" * 1_000_000, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"),
]


def xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("key", "plain", "cipher"), AES_VECTORS)
def test_aes_fips197(backend: str, key: str, plain: str, cipher: str) -> None:
    aes = crypto.Aes128(bytes.fromhex(key), backend=backend)
    assert aes.backend == backend
    assert aes.encrypt(bytes.fromhex(plain)).hex() == cipher


def test_default_backend_is_reported() -> None:
    assert crypto.default_aes_backend() in BACKENDS
    assert ("aes-ni" in BACKENDS) == crypto.aesni_available()
    assert ("vaes" in BACKENDS) == crypto.vaes_available()
    widest = "vaes" if crypto.vaes_available() else "aes-ni" if crypto.aesni_available() else "openssl"
    assert crypto.default_aes_backend() == widest


@given(key=st.binary(min_size=16, max_size=16), n=st.integers(0, 40), data=st.data())
def test_backends_agree_on_every_batch_size(key: bytes, n: int, data: st.DataObject) -> None:
    # Batch sizes around the 8-block interleave exercise the tail loop.
    plain = data.draw(st.binary(min_size=16 * n, max_size=16 * n))
    outs = {b: crypto.Aes128(key, backend=b).encrypt(plain) for b in BACKENDS}
    assert len(set(outs.values())) == 1
    single = crypto.Aes128(key)
    assert b"".join(single.encrypt(plain[i : i + 16]) for i in range(0, len(plain), 16)) == (
        outs[BACKENDS[0]]
    )


def test_aes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="key"):
        crypto.Aes128(b"short")
    with pytest.raises(ValueError, match="backend"):
        crypto.Aes128(bytes(16), backend="des")
    with pytest.raises(ValueError, match="multiple of 16"):
        crypto.Aes128(bytes(16)).encrypt(bytes(17))
    with pytest.raises(TypeError):
        crypto.Aes128(bytes(16)).encrypt("not bytes")


@pytest.mark.parametrize(("msg", "digest"), SHA256_VECTORS)
def test_sha256_fips180(msg: bytes, digest: str) -> None:
    assert crypto.sha256(msg).hex() == digest


@given(st.binary(max_size=4096))
def test_sha256_matches_hashlib(msg: bytes) -> None:
    assert crypto.sha256(msg) == hashlib.sha256(msg).digest()


def test_secure_random_lengths_and_freshness() -> None:
    assert crypto.secure_random(0) == b""
    a, b = crypto.secure_random(64), crypto.secure_random(64)
    assert len(a) == 64 and a != b


@pytest.mark.parametrize("backend", BACKENDS)
def test_tccr_hash_is_its_definition(backend: str) -> None:
    h = crypto.TccrHash(backend=backend)
    pi = crypto.Aes128(crypto.TccrHash.fixed_key(), backend=backend)
    xs = crypto.secure_random(16 * 100)
    ts = crypto.secure_random(16 * 100)
    out = h.hash(xs, ts)
    for k in range(100):
        x, t = xs[16 * k : 16 * k + 16], ts[16 * k : 16 * k + 16]
        y = pi.encrypt(x)
        assert out[16 * k : 16 * k + 16] == xor(pi.encrypt(xor(y, t)), y)


def test_tccr_fixed_key_is_public_and_stable() -> None:
    assert crypto.TccrHash.fixed_key() == hashlib.sha256(b"pie fixed-key AES").digest()[:16]


def test_tccr_tweak_changes_output() -> None:
    h = crypto.TccrHash()
    x = crypto.secure_random(16)
    assert h.hash(x, bytes(16)) != h.hash(x, (1).to_bytes(16, "little"))
    with pytest.raises(ValueError, match="tweaks"):
        h.hash(bytes(32), bytes(16))


@pytest.mark.parametrize("backend", BACKENDS)
def test_prg_is_aes_ctr(backend: str) -> None:
    seed = crypto.secure_random(16)
    stream = crypto.Prg(seed, backend=backend).random_bytes(16 * 20)
    aes = crypto.Aes128(seed, backend=backend)
    counters = b"".join(i.to_bytes(8, "little") + bytes(8) for i in range(20))
    assert stream == aes.encrypt(counters)


def test_prg_tail_bytes_never_reused() -> None:
    seed = bytes(range(16))
    g = crypto.Prg(seed)
    first = g.random_bytes(5)  # consumes block 0 entirely
    second = g.random_bytes(16)  # starts at block 1
    ref = crypto.Prg(seed).random_bytes(32)
    assert first == ref[:5] and second == ref[16:32]


def test_prg_os_seeded_streams_differ() -> None:
    assert crypto.Prg().random_bytes(32) != crypto.Prg().random_bytes(32)
    with pytest.raises(ValueError, match="seed"):
        crypto.Prg(b"123")


def test_package_reexports() -> None:
    for name in pie.__all__:
        assert hasattr(pie, name), name
    for name in crypto.__all__:
        assert hasattr(crypto, name), name
