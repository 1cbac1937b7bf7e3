// Coefficient encoding of convolutions and fully connected layers: which
// input values go into which coefficient of which client polynomial, which
// weights into which server plaintext, and where each output lands.
//
// [REF] Z. Huang, W. Lu, C. Hong, J. Ding, "Cheetah: Lean and Fast Secure
//       Two-Party Deep Neural Network Inference", USENIX Security 2022,
//       section 4.1 (HomConv and HomFC without rotations).
//
// Every layer is first rewritten as a stride-1 "valid" convolution:
//   * zero padding is applied by the encoder (positions outside the image are 0);
//   * stride s is removed by the polyphase decomposition
//       x_(p,r)[c, i, j] = xpad[c, s*i + p, s*j + r],
//       W'[o, (c,p,r), a, b] = W[o, c, s*a + p, s*b + r]   (0 past the kernel),
//     a stride-1 convolution over C*P channels (P = min(s,kh)*min(s,kw)
//     phases; phases whose sub-kernel is empty are left out) with a
//     ceil(k/s) kernel;
//   * groups become a block-diagonal dense weight tensor whose all-zero
//     (output block, input block) pairs are skipped;
//   * a fully connected layer is a 1x1 convolution over a 1x1 image.
// The output is cut into tiles of th x tw positions; a tile's input block is
// Hp x Wp = (th + kh' - 1) x (tw + kw' - 1). An input polynomial holds Cb
// channels of one tile: x[c, y, x] at c*Hp*Wp + y*Wp + x (L = Cb*Hp*Wp). A
// weight plaintext holds Ob output channels:
//   W'[o, c, a, b] at o*L + (Cb-1-c)*Hp*Wp + (kh'-1-a)*Wp + (kw'-1-b),
// and the product's coefficient o*L + T0 + i*Wp + j, T0 = (Cb-1)*Hp*Wp +
// (kh'-1)*Wp + (kw'-1), is output (o, i, j) of the tile. The digit-wise
// argument of Cheetah shows no other product term reaches these positions
// provided no wrapped term does: (Ob+1)*L - 2 - N < T0, which the planner
// enforces. The layout depends on public shapes only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pie::he {

struct ConvShape {
  std::size_t in_channels = 0;
  std::size_t in_height = 0;
  std::size_t in_width = 0;
  std::size_t out_channels = 0;
  std::size_t kernel_h = 0;
  std::size_t kernel_w = 0;
  std::size_t stride = 1;
  std::size_t padding = 0;
  std::size_t groups = 1;

  /// @throws std::invalid_argument naming the field (zero sizes, groups not
  ///         dividing the channels, kernel larger than the padded input, ...).
  void validate() const;
  std::size_t out_height() const;
  std::size_t out_width() const;
  std::size_t input_size() const { return in_channels * in_height * in_width; }
  std::size_t output_size() const { return out_channels * out_height() * out_width(); }
  std::size_t weight_size() const { return out_channels * (in_channels / groups) * kernel_h * kernel_w; }
};

/// A fully connected layer y = W x (W is out_features x in_features) as a ConvShape.
ConvShape fc_shape(std::size_t in_features, std::size_t out_features);

/// Where one output value sits in a reply polynomial.
struct OutputSlot {
  std::uint32_t coeff;  // coefficient index in the reply polynomial
  std::uint32_t index;  // flat index into the (O, Ho, Wo) output tensor
};

class ConvLayout {
 public:
  /// Plans tiles and blocks for polynomials of poly_degree coefficients.
  /// @throws std::invalid_argument (the shape's field, or "shape" when no
  ///         tile fits one polynomial).
  ConvLayout(const ConvShape& shape, std::size_t poly_degree);

  const ConvShape& shape() const { return shape_; }
  std::size_t poly_degree() const { return n_; }
  std::size_t num_tiles() const { return tiles_h_ * tiles_w_; }
  std::size_t num_cblocks() const { return cblocks_; }
  std::size_t num_oblocks() const { return oblocks_; }
  /// Client polynomials: index tile * num_cblocks() + cblock.
  std::size_t num_inputs() const { return num_tiles() * cblocks_; }
  /// Reply polynomials: index tile * num_oblocks() + oblock.
  std::size_t num_outputs() const { return num_tiles() * oblocks_; }
  std::size_t channels_per_block() const { return cb_; }
  std::size_t outputs_per_block() const { return ob_; }
  /// Whether the weight plaintext (oblock, cblock) can be nonzero (groups).
  bool pair_used(std::size_t oblock, std::size_t cblock) const;
  std::size_t num_products() const;

  /// Client: fills the N coefficients of input polynomial `input` from the
  /// (C, H, W) tensor x (values already reduced mod t).
  void encode_input(const std::uint64_t* x, std::size_t input, std::uint64_t* coeffs) const;

  /// Server: the transformed dense weights W'[o][c'][a][b] (stride removed,
  /// groups expanded), each reduced to the centred range mod 2^ring_bits.
  std::vector<std::int64_t> transform_weights(const std::int64_t* w, int ring_bits) const;
  /// Server: the signed coefficients of weight plaintext (oblock, cblock).
  void encode_weights(const std::vector<std::int64_t>& transformed, std::size_t oblock, std::size_t cblock,
                      std::int64_t* coeffs) const;

  /// The outputs carried by reply polynomial `output`.
  const std::vector<OutputSlot>& slots(std::size_t output) const { return slots_[output]; }

 private:
  void plan();
  void build_slots();

  ConvShape shape_;
  std::size_t n_;
  // Transformed problem.
  std::size_t phases_h_ = 1, phases_w_ = 1;  // phases along rows / columns
  std::size_t cp_ = 0;                       // channels after the polyphase split
  std::size_t kh_ = 0, kw_ = 0;              // kernel after the split
  std::size_t ho_ = 0, wo_ = 0;
  // Plan.
  std::size_t th_ = 0, tw_ = 0, tiles_h_ = 0, tiles_w_ = 0;
  std::size_t hp_ = 0, wp_ = 0;
  std::size_t cb_ = 0, ob_ = 0, cblocks_ = 0, oblocks_ = 0;
  std::vector<std::vector<OutputSlot>> slots_;
};

/// The ideal functionality: y = conv(x, w) mod 2^ring_bits in plain integers
/// (x: (C, H, W) values, w: (O, C/groups, kh, kw) signed), for tests.
std::vector<std::uint64_t> conv_reference(const ConvShape& shape, const std::uint64_t* x, const std::int64_t* w,
                                          int ring_bits);

}  // namespace pie::he
