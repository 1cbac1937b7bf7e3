// The online half of a linear step: the server's exact convolution of its
// shares, W * x mod 2^l (DESIGN.md section 2: online, the server computes
// W (x - r) + s on the masked input; the HE offline phase gave the client
// W r - s).
//
// Arithmetic is uint64, which wraps mod 2^64; 2^l divides 2^64, so the result
// masked to l bits is exact for any l <= 64 whatever the order of the sums.
// Weights are signed integers taken mod 2^64 (two's complement), stored in the
// narrowest of int16 / int32 / int64 that holds them: a wide layer at small
// resolution is bound by reading its weights, not by its multiplies. Inner loops run over
// output channels, so every layer shape vectorises (AVX-512's 64-bit multiply
// where the CPU has it, chosen at run time; plain 64-bit multiplies else).
#pragma once

#include <cstddef>
#include <cstdint>

namespace pie::he {

/// A 2-D convolution's geometry (zero padding, no dilation).
struct RingConvShape {
  std::size_t n = 1;              // images
  std::size_t c = 0, h = 0, w = 0;  // input channels and size
  std::size_t o = 0;              // output channels
  std::size_t kh = 0, kw = 0;
  std::size_t stride_h = 1, stride_w = 1;
  std::size_t pad_h = 0, pad_w = 0;
  std::size_t groups = 1;

  std::size_t out_h() const { return (h + 2 * pad_h - kh) / stride_h + 1; }
  std::size_t out_w() const { return (w + 2 * pad_w - kw) / stride_w + 1; }
};

/// Checks the geometry: positive sizes, channels divisible by groups, the
/// kernel within the padded input.
/// @throws std::invalid_argument naming the first problem.
void check_ring_conv(const RingConvShape& s);

/// y = conv2d(x, weight) mod 2^bits.
///   x:      (n, c, h, w) residues (any representative mod 2^bits)
///   weight: (c / groups, kh, kw, o) -- the (o, c / groups, kh, kw) weight
///           transposed so that output channels are contiguous
///   y:      (n, o, out_h, out_w), in [0, 2^bits)
/// threads > 1 splits the work across OpenMP threads (0: all); simd =
/// false keeps to the portable loop (tests compare both).
/// @throws std::invalid_argument if the shape is invalid or bits is not in [1, 64].
/// W is std::int16_t, std::int32_t or std::int64_t.
template <typename W>
void ring_conv2d(const RingConvShape& s, const std::uint64_t* x, const W* weight, std::uint64_t* y,
                 unsigned bits, int threads = 1, bool simd = true);

/// Whether ring_conv2d uses AVX-512 on this CPU.
bool ring_conv_vectorised();

}  // namespace pie::he
