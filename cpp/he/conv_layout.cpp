#include "he/conv_layout.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace pie::he {

namespace {

std::size_t ceil_div(std::size_t a, std::size_t b) { return (a + b - 1) / b; }

// Candidate tile extents: ceil(extent / k) for every k, without repeats.
std::vector<std::size_t> tile_candidates(std::size_t extent) {
  std::vector<std::size_t> out;
  for (std::size_t k = 1; k <= extent; ++k) {
    const std::size_t v = ceil_div(extent, k);
    if (out.empty() || out.back() != v) out.push_back(v);
  }
  return out;
}

std::int64_t centred_mod(std::int64_t w, int ring_bits) {
  const std::uint64_t t = std::uint64_t{1} << ring_bits;
  std::uint64_t r = static_cast<std::uint64_t>(w) & (t - 1);
  if (r >= t / 2) return static_cast<std::int64_t>(r) - static_cast<std::int64_t>(t);
  return static_cast<std::int64_t>(r);
}

}  // namespace

void ConvShape::validate() const {
  constexpr std::size_t kMax = std::size_t{1} << 20;
  if (in_channels == 0 || in_channels > kMax) throw std::invalid_argument("in_channels must be in [1, 2^20]");
  if (out_channels == 0 || out_channels > kMax) throw std::invalid_argument("out_channels must be in [1, 2^20]");
  if (in_height == 0 || in_height > 4096) throw std::invalid_argument("in_height must be in [1, 4096]");
  if (in_width == 0 || in_width > 4096) throw std::invalid_argument("in_width must be in [1, 4096]");
  if (kernel_h == 0 || kernel_h > 16) throw std::invalid_argument("kernel_h must be in [1, 16]");
  if (kernel_w == 0 || kernel_w > 16) throw std::invalid_argument("kernel_w must be in [1, 16]");
  if (stride == 0 || stride > 16) throw std::invalid_argument("stride must be in [1, 16]");
  if (padding > 16) throw std::invalid_argument("padding must be in [0, 16]");
  if (groups == 0 || in_channels % groups != 0 || out_channels % groups != 0) {
    throw std::invalid_argument("groups must divide in_channels and out_channels");
  }
  if (in_height + 2 * padding < kernel_h || in_width + 2 * padding < kernel_w) {
    throw std::invalid_argument("kernel_h/kernel_w: the kernel is larger than the padded input");
  }
  if (output_size() > (std::size_t{1} << 31) || input_size() > (std::size_t{1} << 31)) {
    throw std::invalid_argument("shape: tensors above 2^31 values are not supported");
  }
}

std::size_t ConvShape::out_height() const { return (in_height + 2 * padding - kernel_h) / stride + 1; }
std::size_t ConvShape::out_width() const { return (in_width + 2 * padding - kernel_w) / stride + 1; }

ConvShape fc_shape(std::size_t in_features, std::size_t out_features) {
  ConvShape s;
  s.in_channels = in_features;
  s.out_channels = out_features;
  s.in_height = s.in_width = 1;
  s.kernel_h = s.kernel_w = 1;
  return s;
}

ConvLayout::ConvLayout(const ConvShape& shape, std::size_t poly_degree) : shape_(shape), n_(poly_degree) {
  shape_.validate();
  if (n_ < 1024 || n_ > 32768 || (n_ & (n_ - 1)) != 0) {
    throw std::invalid_argument("poly_degree must be a power of two in [1024, 32768]");
  }
  const std::size_t s = shape_.stride;
  phases_h_ = std::min(s, shape_.kernel_h);
  phases_w_ = std::min(s, shape_.kernel_w);
  cp_ = shape_.in_channels * phases_h_ * phases_w_;
  kh_ = ceil_div(shape_.kernel_h, s);
  kw_ = ceil_div(shape_.kernel_w, s);
  ho_ = shape_.out_height();
  wo_ = shape_.out_width();
  plan();
  build_slots();
}

bool ConvLayout::pair_used(std::size_t oblock, std::size_t cblock) const {
  if (shape_.groups == 1) return true;
  const std::size_t per_group_in = cp_ / shape_.groups;  // transformed channels per group
  const std::size_t per_group_out = shape_.out_channels / shape_.groups;
  const std::size_t c0 = cblock * cb_, c1 = std::min(cp_, c0 + cb_) - 1;
  const std::size_t o0 = oblock * ob_, o1 = std::min(shape_.out_channels, o0 + ob_) - 1;
  const std::size_t g_c0 = c0 / per_group_in, g_c1 = c1 / per_group_in;
  const std::size_t g_o0 = o0 / per_group_out, g_o1 = o1 / per_group_out;
  return g_c0 <= g_o1 && g_o0 <= g_c1;
}

std::size_t ConvLayout::num_products() const {
  std::size_t count = 0;
  for (std::size_t ob = 0; ob < oblocks_; ++ob) {
    for (std::size_t cb = 0; cb < cblocks_; ++cb) count += pair_used(ob, cb) ? 1 : 0;
  }
  return count * num_tiles();
}

void ConvLayout::plan() {
  // Cost model (CPU microseconds measured at N = 8192 with three 60-bit
  // limbs): a client ciphertext ~4300 (client encryption + server load and
  // NTT), a weight plaintext ~400 (three NTTs; shared by all tiles), a
  // ciphertext-plaintext product ~100 (NTT-domain multiply-accumulate), a
  // reply ~3400; plus bytes at 200 MB/s (a client ciphertext carries three
  // limbs, a reply's c1 one).
  const double n = static_cast<double>(n_);
  const std::size_t o = shape_.out_channels;
  const std::size_t per_group_in = cp_ / shape_.groups;
  const std::size_t per_group_out = o / shape_.groups;
  double best = std::numeric_limits<double>::infinity();
  for (const std::size_t th : tile_candidates(ho_)) {
    for (const std::size_t tw : tile_candidates(wo_)) {
      const std::size_t hp = th + kh_ - 1, wp = tw + kw_ - 1, hw = hp * wp;
      if (hw > n_) continue;
      const std::size_t tiles = ceil_div(ho_, th) * ceil_div(wo_, tw);
      // (Ob+1)*L - 2 - N < T0  <=>  Ob*Cb*hw <= N + 1 - hw + (kh'-1)*wp + (kw'-1)
      const std::size_t room = n_ + 1 - hw + (kh_ - 1) * wp + (kw_ - 1);
      for (std::size_t cb = 1; cb <= cp_; ++cb) {
        const std::size_t ob = std::min(o, room / (cb * hw));
        if (ob == 0) break;
        const std::size_t cblocks = ceil_div(cp_, cb), oblocks = ceil_div(o, ob);
        std::size_t pairs = 0;
        if (shape_.groups == 1) {
          pairs = cblocks * oblocks;
        } else {
          for (std::size_t c = 0; c < cblocks; ++c) {
            const std::size_t g0 = c * cb / per_group_in, g1 = (std::min(cp_, c * cb + cb) - 1) / per_group_in;
            pairs += ((g1 + 1) * per_group_out - 1) / ob - (g0 * per_group_out) / ob + 1;
          }
        }
        const double ins = static_cast<double>(tiles * cblocks), outs = static_cast<double>(tiles * oblocks);
        const double bytes = ins * n * 24 + outs * n * 8 + static_cast<double>(ho_ * wo_ * o) * 8;
        const double cost = ins * 4300 + static_cast<double>(pairs) * 400 + static_cast<double>(pairs * tiles) * 100 +
                            outs * 3400 + bytes / 200;
        if (cost < best) {
          best = cost;
          th_ = th, tw_ = tw, hp_ = hp, wp_ = wp, cb_ = cb, ob_ = ob;
        }
      }
    }
  }
  if (cb_ == 0) throw std::invalid_argument("shape: the kernel does not fit one polynomial of poly_degree");
  tiles_h_ = ceil_div(ho_, th_);
  tiles_w_ = ceil_div(wo_, tw_);
  cblocks_ = ceil_div(cp_, cb_);
  oblocks_ = ceil_div(o, ob_);
}

void ConvLayout::build_slots() {
  const std::size_t hw = hp_ * wp_, l = cb_ * hw;
  const std::size_t t0 = (cb_ - 1) * hw + (kh_ - 1) * wp_ + (kw_ - 1);
  slots_.assign(num_outputs(), {});
  for (std::size_t ti = 0; ti < tiles_h_; ++ti) {
    for (std::size_t tj = 0; tj < tiles_w_; ++tj) {
      const std::size_t tile = ti * tiles_w_ + tj;
      for (std::size_t ob = 0; ob < oblocks_; ++ob) {
        auto& out = slots_[tile * oblocks_ + ob];
        for (std::size_t oo = 0; oo < ob_ && ob * ob_ + oo < shape_.out_channels; ++oo) {
          for (std::size_t i = 0; i < th_ && ti * th_ + i < ho_; ++i) {
            for (std::size_t j = 0; j < tw_ && tj * tw_ + j < wo_; ++j) {
              const std::size_t coeff = oo * l + t0 + i * wp_ + j;
              const std::size_t index = ((ob * ob_ + oo) * ho_ + ti * th_ + i) * wo_ + tj * tw_ + j;
              out.push_back({static_cast<std::uint32_t>(coeff), static_cast<std::uint32_t>(index)});
            }
          }
        }
      }
    }
  }
}

void ConvLayout::encode_input(const std::uint64_t* x, std::size_t input, std::uint64_t* coeffs) const {
  if (input >= num_inputs()) throw std::invalid_argument("input: polynomial index out of range");
  std::fill(coeffs, coeffs + n_, 0);
  const std::size_t tile = input / cblocks_, cblock = input % cblocks_;
  const std::size_t row0 = (tile / tiles_w_) * th_, col0 = (tile % tiles_w_) * tw_;
  const std::size_t h = shape_.in_height, w = shape_.in_width, s = shape_.stride, pad = shape_.padding;
  const std::size_t phases = phases_h_ * phases_w_;
  for (std::size_t cc = 0; cc < cb_; ++cc) {
    const std::size_t ct = cblock * cb_ + cc;
    if (ct >= cp_) break;
    const std::size_t c = ct / phases, p = (ct % phases) / phases_w_, r = ct % phases_w_;
    const std::uint64_t* plane = x + c * h * w;
    for (std::size_t y = 0; y < hp_; ++y) {
      const std::size_t yy = s * (row0 + y) + p;  // row in the padded image
      if (yy < pad || yy - pad >= h) continue;
      for (std::size_t xx = 0; xx < wp_; ++xx) {
        const std::size_t xc = s * (col0 + xx) + r;
        if (xc < pad || xc - pad >= w) continue;
        coeffs[cc * hp_ * wp_ + y * wp_ + xx] = plane[(yy - pad) * w + (xc - pad)];
      }
    }
  }
}

std::vector<std::int64_t> ConvLayout::transform_weights(const std::int64_t* w, int ring_bits) const {
  const std::size_t o_count = shape_.out_channels, cg = shape_.in_channels / shape_.groups;
  const std::size_t og = o_count / shape_.groups, s = shape_.stride;
  const std::size_t phases = phases_h_ * phases_w_;
  std::vector<std::int64_t> out(o_count * cp_ * kh_ * kw_, 0);
  for (std::size_t o = 0; o < o_count; ++o) {
    const std::size_t g = o / og;
    for (std::size_t ci = 0; ci < cg; ++ci) {
      const std::size_t c = g * cg + ci;
      for (std::size_t dy = 0; dy < shape_.kernel_h; ++dy) {
        for (std::size_t dx = 0; dx < shape_.kernel_w; ++dx) {
          const std::int64_t v = w[((o * cg + ci) * shape_.kernel_h + dy) * shape_.kernel_w + dx];
          const std::size_t ct = c * phases + (dy % s) * phases_w_ + (dx % s);
          out[((o * cp_ + ct) * kh_ + dy / s) * kw_ + dx / s] = centred_mod(v, ring_bits);
        }
      }
    }
  }
  return out;
}

void ConvLayout::encode_weights(const std::vector<std::int64_t>& transformed, std::size_t oblock, std::size_t cblock,
                                std::int64_t* coeffs) const {
  std::fill(coeffs, coeffs + n_, 0);
  const std::size_t hw = hp_ * wp_, l = cb_ * hw;
  for (std::size_t oo = 0; oo < ob_; ++oo) {
    const std::size_t o = oblock * ob_ + oo;
    if (o >= shape_.out_channels) break;
    for (std::size_t cc = 0; cc < cb_; ++cc) {
      const std::size_t ct = cblock * cb_ + cc;
      if (ct >= cp_) break;
      const std::int64_t* k = transformed.data() + (o * cp_ + ct) * kh_ * kw_;
      for (std::size_t a = 0; a < kh_; ++a) {
        for (std::size_t b = 0; b < kw_; ++b) {
          coeffs[oo * l + (cb_ - 1 - cc) * hw + (kh_ - 1 - a) * wp_ + (kw_ - 1 - b)] = k[a * kw_ + b];
        }
      }
    }
  }
}

std::vector<std::uint64_t> conv_reference(const ConvShape& shape, const std::uint64_t* x, const std::int64_t* w,
                                          int ring_bits) {
  shape.validate();
  const std::uint64_t mask = ring_bits >= 64 ? ~std::uint64_t{0} : (std::uint64_t{1} << ring_bits) - 1;
  const std::size_t ho = shape.out_height(), wo = shape.out_width();
  const std::size_t cg = shape.in_channels / shape.groups, og = shape.out_channels / shape.groups;
  const std::size_t h = shape.in_height, wd = shape.in_width;
  std::vector<std::uint64_t> y(shape.output_size(), 0);
  for (std::size_t o = 0; o < shape.out_channels; ++o) {
    const std::size_t g = o / og;
    for (std::size_t i = 0; i < ho; ++i) {
      for (std::size_t j = 0; j < wo; ++j) {
        std::uint64_t acc = 0;  // uint64 wrap-around is exact mod 2^l
        for (std::size_t ci = 0; ci < cg; ++ci) {
          for (std::size_t dy = 0; dy < shape.kernel_h; ++dy) {
            const std::size_t yy = i * shape.stride + dy;
            if (yy < shape.padding || yy - shape.padding >= h) continue;
            for (std::size_t dx = 0; dx < shape.kernel_w; ++dx) {
              const std::size_t xx = j * shape.stride + dx;
              if (xx < shape.padding || xx - shape.padding >= wd) continue;
              const std::uint64_t wv = static_cast<std::uint64_t>(
                  w[((o * cg + ci) * shape.kernel_h + dy) * shape.kernel_w + dx]);
              acc += wv * x[((g * cg + ci) * h + yy - shape.padding) * wd + xx - shape.padding];
            }
          }
        }
        y[(o * ho + i) * wo + j] = acc & mask;
      }
    }
  }
  return y;
}

}  // namespace pie::he
