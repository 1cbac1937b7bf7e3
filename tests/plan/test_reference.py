"""Exactness of the reference executor's ring arithmetic against plain Python ints."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pie import _core
from pie.plan.reference import (_conv_native, conv2d_limbs, conv2d_ring, fc_limbs, fc_ring, native_threads,
                                native_work, prepare_weight, relu_shift, to_signed, truncate_shift)

BITS = st.integers(min_value=1, max_value=64)


def _signed(v: int, bits: int) -> int:
    v %= 1 << bits
    return v - (1 << bits) if v >= 1 << (bits - 1) else v


def _ints(draw, shape, bits):
    """Residues mod 2^bits, biased toward the extremes (0, 2^(bits-1) +- 1, 2^bits - 1)."""
    top = (1 << bits) - 1
    special = st.sampled_from([0, 1, top, top >> 1, (top >> 1) + 1, max(top - 1, 0)])
    values = draw(st.lists(st.one_of(special, st.integers(0, top)),
                           min_size=int(np.prod(shape)), max_size=int(np.prod(shape))))
    return values


def _weights(draw, n, wbits):
    lim = (1 << (wbits - 1)) - 1
    extreme = st.sampled_from([lim, -lim, -lim - 1, 0])
    return draw(st.lists(st.one_of(extreme, st.integers(-lim, lim)), min_size=n, max_size=n))


@st.composite
def conv_case(draw):
    groups = draw(st.sampled_from([1, 2]))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 2))
    c, o = cg * groups, og * groups
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(kh, 5)), draw(st.integers(kw, 5))
    stride = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 1)), draw(st.integers(0, 1)))
    n = draw(st.integers(1, 2))
    bits = draw(BITS)
    wbits = draw(st.integers(2, 24))
    x = _ints(draw, (n, c, h, w), 64)
    wt = _weights(draw, o * cg * kh * kw, wbits)
    return (np.array(x, dtype=np.uint64).reshape(n, c, h, w),
            np.array(wt, dtype=np.int64).reshape(o, cg, kh, kw), stride, padding, groups, bits)


def _conv_oracle(x, w, stride, padding, groups, bits):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (wd + 2 * padding[1] - kw) // stride[1] + 1
    out = np.zeros((n, o, ho, wo), dtype=np.uint64)
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(ho):
                for j in range(wo):
                    acc = 0
                    for ci in range(cg):
                        for a in range(kh):
                            for e in range(kw):
                                y = i * stride[0] - padding[0] + a
                                z = j * stride[1] - padding[1] + e
                                if 0 <= y < h and 0 <= z < wd:
                                    acc += int(w[oc, ci, a, e]) * int(x[b, g * cg + ci, y, z])
                    out[b, oc, i, j] = acc % (1 << bits)
    return out


@settings(max_examples=150, deadline=None)
@given(conv_case())
def test_conv2d_ring_is_exact(case):
    """Every way of computing it (float64 limbs; the native uint64 kernel, with
    and without AVX-512) and the choice between them."""
    x, w, stride, padding, groups, bits = case
    want = _conv_oracle(x, w, stride, padding, groups, bits)
    np.testing.assert_array_equal(conv2d_ring(x, w, stride, padding, groups, bits), want)
    np.testing.assert_array_equal(conv2d_limbs(x, prepare_weight(w), stride, padding, groups, bits), want)
    taps = prepare_weight(w).taps
    for simd in (True, False):
        np.testing.assert_array_equal(_conv_native(x, taps, stride, padding, groups, bits, simd), want)


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_native_conv_fills_vector_lanes(data):
    """Output channels per group spanning whole 8-lane vectors and a remainder
    (the AVX-512 loop and its tail), against plain integers."""
    groups = data.draw(st.sampled_from([1, 2]))
    og, cg = data.draw(st.sampled_from([8, 9, 16, 17])), data.draw(st.integers(1, 2))
    h = data.draw(st.integers(2, 4))
    stride, padding = data.draw(st.integers(1, 2)), data.draw(st.integers(0, 1))
    bits = data.draw(BITS)
    x = np.array(_ints(data.draw, (1, cg * groups, h, h), 64), dtype=np.uint64).reshape(1, cg * groups, h, h)
    w = np.array(_weights(data.draw, og * groups * cg * 4, data.draw(st.integers(2, 24))),
                 dtype=np.int64).reshape(og * groups, cg, 2, 2)
    want = _conv_oracle(x, w, (stride, stride), (padding, padding), groups, bits)
    taps = prepare_weight(w).taps
    for simd in (True, False):
        got = _conv_native(x, taps, (stride, stride), (padding, padding), groups, bits, simd)
        np.testing.assert_array_equal(got, want)
    # The work split across threads gives the same sums, and so does every
    # wider storage of the same taps (the kernel sign-extends what it reads).
    for wide in (taps, taps.astype(np.int32), taps.astype(np.int64), taps.astype(np.int64).view(np.uint64)):
        got = _core.ring_conv2d(x, wide, (stride, stride), (padding, padding), groups, bits, threads=2)
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("images, groups, out_per_group, pixels, taps, tile_macs", [
    (1, 1, 100, 1, 8192, 104 * 8192),    # a classifier: 100 of 104 channels
    (1, 1, 64, 1024, 27, 64 * 1024 * 27),  # whole vectors: nothing padded
    (2, 3, 5, 6, 9, 2 * 3 * 6 * 8 * 9),    # per image and group: 5 -> 8 channels
])
def test_native_work_counts_whole_vectors(images, groups, out_per_group, pixels, taps, tile_macs):
    assert native_work(images, groups, out_per_group, pixels, taps) == (tile_macs, images * groups * pixels * out_per_group)


@pytest.mark.parametrize("shape", [(8, 4, 3, 3), (7, 20)])
def test_prepared_weight_makes_its_float64_tensor_on_first_use(shape):
    w = np.random.default_rng(4).integers(-(2**20), 2**20, shape)
    prepared = prepare_weight(w)
    assert not prepared._floats  # nothing for the limb path until it runs
    assert prepared.shape == shape and prepared.tensor.dtype == torch.float64
    assert np.array_equal(prepared.tensor.numpy(), w.astype(np.float64))
    assert prepared.tensor is prepared.tensor


@pytest.mark.parametrize("largest, dtype", [(0, np.int16), (2**15 - 1, np.int16), (2**15, np.int32),
                                            (2**31 - 1, np.int32), (2**31, np.int64), (2**40, np.int64)])
def test_taps_take_the_narrowest_type(largest, dtype):
    """A weight's taps are stored in the narrowest signed type that holds them,
    and the native product is the same in it (negative extremes included)."""
    w = np.array([[[[largest]], [[-largest]]], [[[1]], [[-1]]]], dtype=np.int64)  # (2, 2, 1, 1)
    taps = prepare_weight(w).taps
    assert taps.dtype == dtype
    x = np.array([[[[3]], [[(1 << 64) - 5]]]], dtype=np.uint64)
    want = _conv_oracle(x, w, (1, 1), (0, 0), 1, 64)
    for simd in (True, False):
        np.testing.assert_array_equal(_conv_native(x, taps, (1, 1), (0, 0), 1, 64, simd), want)


def test_large_products_agree_across_paths():
    """Above the one-thread size the native core splits the output rows across
    threads: it must equal the float64-limb path, an independent implementation."""
    rng = np.random.default_rng(3)
    x = rng.integers(0, 1 << 59, (1, 64, 16, 16), dtype=np.uint64)
    w = prepare_weight(rng.integers(-2048, 2048, (64, 64, 3, 3), dtype=np.int64))
    assert native_threads(64 * 64 * 9 * 256) != 1
    np.testing.assert_array_equal(conv2d_ring(x, w, (1, 1), (1, 1), 1, 59),
                                  conv2d_limbs(x, w, (1, 1), (1, 1), 1, 59))
    xf = rng.integers(0, 1 << 40, (1, 4096), dtype=np.uint64)
    wf = prepare_weight(rng.integers(-2048, 2048, (2048, 4096), dtype=np.int64))
    np.testing.assert_array_equal(fc_ring(xf, wf, 40), fc_limbs(xf, wf, 40))


def test_native_conv_refuses_bad_shapes():
    x = np.zeros((1, 4, 3, 3), dtype=np.uint64)
    taps = prepare_weight(np.ones((2, 2, 3, 3), dtype=np.int64)).taps
    with pytest.raises(ValueError, match="channels"):
        _conv_native(x, taps, (1, 1), (1, 1), 3, 37)  # 4 channels, 3 groups
    with pytest.raises(ValueError, match="kernel larger"):
        _conv_native(np.zeros((1, 2, 1, 1), dtype=np.uint64), prepare_weight(np.ones((2, 2, 3, 3), dtype=np.int64)).taps,
                     (1, 1), (0, 0), 1, 37)
    with pytest.raises(ValueError, match="bits"):
        _conv_native(x[:, :2], taps, (1, 1), (1, 1), 1, 65)
    with pytest.raises(ValueError, match="int16, int32, int64 or uint64"):
        _conv_native(x[:, :2], taps.astype(np.float64), (1, 1), (1, 1), 1, 37)
    with pytest.raises(ValueError, match="C-contiguous"):
        _conv_native(x[:, :2], np.asfortranarray(np.ones((2, 3, 3, 3), dtype=np.int16)), (1, 1), (1, 1), 1, 37)


@settings(max_examples=150, deadline=None)
@given(st.data())
def test_fc_ring_is_exact(data):
    n, k, o = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 40)), data.draw(st.integers(1, 4))
    bits = data.draw(BITS)
    x = np.array(_ints(data.draw, (n, k), 64), dtype=np.uint64).reshape(n, k)
    w = np.array(_weights(data.draw, o * k, data.draw(st.integers(2, 24))),
                 dtype=np.int64).reshape(o, k)
    want = [[sum(int(w[r, i]) * int(x[b, i]) for i in range(k)) % (1 << bits) for r in range(o)]
            for b in range(n)]
    want = np.array(want, dtype=np.uint64)
    np.testing.assert_array_equal(fc_ring(x, w, bits), want)  # the native kernel at these sizes
    np.testing.assert_array_equal(fc_limbs(x, prepare_weight(w), bits), want)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_native_matrix_vector_path(data):
    """One output pixel from 1x1 taps (a fully connected layer, or a 1x1 conv whose
    stride leaves one pixel) runs row by row: input channels split across
    threads in blocks of four rows and a remainder, output channels in whole
    8-lane vectors and a remainder, every tap storage, against plain integers."""
    n, k = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 19))
    o = data.draw(st.sampled_from([1, 7, 8, 9, 16, 17, 33, 100]))
    side = data.draw(st.sampled_from([1, 2]))  # 2: a stride-2 1x1 conv reads pixel (0, 0) only
    bits = data.draw(BITS)
    x = np.array(_ints(data.draw, (n, k, side, side), 64), dtype=np.uint64).reshape(n, k, side, side)
    w = np.array(_weights(data.draw, o * k, data.draw(st.integers(2, 40))), dtype=np.int64).reshape(o, k, 1, 1)
    want = _conv_oracle(x, w, (side, side), (0, 0), 1, bits)
    taps = prepare_weight(w).taps
    for wide in [taps.astype(t) for t in (np.int16, np.int32, np.int64) if np.dtype(t).itemsize >= taps.itemsize]:
        for threads in (1, 2):
            got = _core.ring_conv2d(x, wide, (side, side), (0, 0), 1, bits, threads=threads)
            np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(_conv_native(x, taps, (side, side), (0, 0), 1, bits, False), want)


def test_large_fan_in_uses_several_limbs_exactly():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 2**63, size=(1, 512, 3, 3), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    w = rng.integers(-2047, 2048, size=(4, 512, 3, 3), dtype=np.int64)
    for bits in (37, 59, 64):
        got = conv2d_ring(x, w, (1, 1), (1, 1), 1, bits)
        np.testing.assert_array_equal(got, _conv_oracle(x, w, (1, 1), (1, 1), 1, bits))


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_relu_and_truncate_match_circuit_semantics(data):
    bits_in, bits_out = data.draw(BITS), data.draw(BITS)
    shift = data.draw(st.integers(0, bits_in))
    vals = _ints(data.draw, (8,), bits_in)
    x = np.array(vals, dtype=np.uint64)
    relu = [(max(_signed(v, bits_in), 0) >> shift) % (1 << bits_out) for v in vals]
    trunc = [(_signed(v, bits_in) >> shift) % (1 << bits_out) for v in vals]
    np.testing.assert_array_equal(relu_shift(x, bits_in, shift, bits_out), np.array(relu, np.uint64))
    np.testing.assert_array_equal(truncate_shift(x, bits_in, shift, bits_out),
                                  np.array(trunc, np.uint64))
    np.testing.assert_array_equal(to_signed(x, bits_in),
                                  np.array([_signed(v, bits_in) for v in vals], np.int64))
