// Depthwise-convolution weight (and bias) gradient on channels-last fp32 maps, AVX-512 + OpenMP.
//
//   dw[c, i, j] = sum_{b, y, x} xpad[b, c, y + i d, x + j d] * dy[b, c, y, x]     db[c] = sum dy[b, c, y, x]
//
// over an explicitly zero-padded input (the caller pads: 'valid' geometry, Hp = H + d (kh - 1)). ATen's CPU
// convolution_backward has no fast depthwise weight-gradient kernel (at VAN's LKA shapes, 1 thread, it
// costs 10-60x the forward convolution); this one is a streaming reduction:
//   * channels are the vector lanes (16 per zmm, masked tail), read with unit stride from NHWC rows;
//   * register blocking along a kernel row: NX consecutive dy vectors (columns x0 .. x0 + NX - 1) stay in
//     registers while the NX + d (NT - 1) input columns they meet are streamed in order, each loaded once
//     for the up to NT taps it feeds: NX * NT FMAs per 2 NX + d (NT - 1) loads (8 columns x 7 taps at
//     d = 3: 56 FMAs per 34 loads), NT <= 8 tap accumulators in registers. The dilation is a compile-time
//     constant for d <= 4; larger ones walk one residue class of columns (x0, x0 + d, ...) at a time.
//     A row's last columns run as one masked block (zeros past the row);
//   * parallel over chunks of consecutive (batch, row) pairs; each chunk sums into its own buffer and the
//     buffers are added in chunk order at the end. The chunking depends on the shape only (never on the
//     thread count), so the result is bitwise the same for any number of threads.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <vector>

namespace {

constexpr int kTaps = 8;      // taps of a kernel row held in registers at once
constexpr int64_t kMaxChunks = 64;
constexpr int64_t kMinChunkPixels = 32;  // >= this many output pixels per chunk (its buffer's reduction is ~1/32)

inline __mmask16 lanes(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

// Strides (in floats) of one NHWC-addressable map: batch, row, column; channels are unit-stride.
struct Map {
  const float* p;
  int64_t sb, sh, sw;
};

// acc[j] += sum_m xs[(m + D j) * sxw] * dys[m * sdw] over the first n <= NX of NX positions m (columns in
// order, dilation D known at compile time: each input vector is loaded once for the up to NT taps that
// meet it), or with D = 1 and strides pre-scaled by a runtime dilation (one residue class of columns).
// Positions m >= n read zeros (masked loads), so a row's tail runs as one short block.
template <int NT, int NX, int D>
inline void block(__m512 (&acc)[NT], const float* xs, const float* dys, int64_t sxw, int64_t sdw, __mmask16 km,
                  int n = NX) {
  __m512 g[NX];
#pragma GCC unroll 16
  for (int m = 0; m < NX; ++m) g[m] = _mm512_maskz_loadu_ps(m < n ? km : 0, dys + m * sdw);
#pragma GCC unroll 64
  for (int t = 0; t < NX + D * (NT - 1); ++t) {
    const __m512 v = _mm512_maskz_loadu_ps(t < n + D * (NT - 1) ? km : 0, xs + t * sxw);
#pragma GCC unroll 16
    for (int j = 0; j < NT; ++j) {
      const int m = t - D * j;
      if (m >= 0 && m < NX) acc[j] = _mm512_fmadd_ps(v, g[m], acc[j]);
    }
  }
}

// NT taps (columns j0 .. j0 + NT - 1 of kernel row i) of one 16-channel block over one output row:
// xs = xpad row y + i d at column j0 d, dys = dy row y; acc: NT vectors cp floats apart. D > 0: the
// dilation (== d) at compile time, columns in order; D == 0: any d, one residue class of columns at a time.
template <int NT, int D>
void row_taps(float* accp, int64_t cp, const float* xs, const float* dys, int64_t sxw, int64_t sdw, int64_t W,
              int64_t d, __mmask16 km) {
  __m512 acc[NT];
#pragma GCC unroll 16
  for (int j = 0; j < NT; ++j) acc[j] = _mm512_loadu_ps(accp + j * cp);
  if constexpr (D > 0) {
    // measured at VAN's shapes: 8-column blocks beat 12 or 16 on wide rows; a row of 9-16 columns is one block
    int64_t x = 0;
    if (W > 8 && W <= 16) {
      block<NT, 16, D>(acc, xs, dys, sxw, sdw, km, (int)W);
      x = W;
    }
    for (; x + 8 <= W; x += 8) block<NT, 8, D>(acc, xs + x * sxw, dys + x * sdw, sxw, sdw, km);
    const int rem = (int)(W - x);
    if (rem > 4) block<NT, 8, D>(acc, xs + x * sxw, dys + x * sdw, sxw, sdw, km, rem);
    else if (rem > 0) block<NT, 4, D>(acc, xs + x * sxw, dys + x * sdw, sxw, sdw, km, rem);
  } else {
    const int64_t xstep = d * sxw, dystep = d * sdw;
    for (int64_t r = 0; r < std::min(d, W); ++r) {  // the columns r, r + d, r + 2d, ...
      int64_t x = r;
      for (; x + 7 * d < W; x += 8 * d) block<NT, 8, 1>(acc, xs + x * sxw, dys + x * sdw, xstep, dystep, km);
      for (; x + 3 * d < W; x += 4 * d) block<NT, 4, 1>(acc, xs + x * sxw, dys + x * sdw, xstep, dystep, km);
      for (; x < W; x += d) block<NT, 1, 1>(acc, xs + x * sxw, dys + x * sdw, xstep, dystep, km);
    }
  }
#pragma GCC unroll 16
  for (int j = 0; j < NT; ++j) _mm512_storeu_ps(accp + j * cp, acc[j]);
}

using RowTaps = void (*)(float*, int64_t, const float*, const float*, int64_t, int64_t, int64_t, int64_t, __mmask16);
constexpr int kMaxD = 4;  // dilations 1 .. kMaxD have their own compiled loops

template <int D>
constexpr std::array<RowTaps, kTaps> row_table() {
  return {row_taps<1, D>, row_taps<2, D>, row_taps<3, D>, row_taps<4, D>,
          row_taps<5, D>, row_taps<6, D>, row_taps<7, D>, row_taps<8, D>};
}
constexpr std::array<std::array<RowTaps, kTaps>, kMaxD + 1> kRowTaps = {row_table<0>(), row_table<1>(), row_table<2>(),
                                                                       row_table<3>(), row_table<4>()};

// db partial: acc[c] += sum_x dy[x, c] over one row
void row_sum(float* accp, const float* dys, int64_t sdw, int64_t W, __mmask16 km) {
  __m512 a = _mm512_loadu_ps(accp);
  for (int64_t x = 0; x < W; ++x) a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(km, dys + x * sdw));
  _mm512_storeu_ps(accp, a);
}

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), name, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == 4, name, " must be 4-D [B, C, H, W], got ", t.dim(), "-D");
  TORCH_CHECK(t.size(1) <= 1 || t.stride(1) == 1, name, " must have unit channel stride (channels_last)");
}

}  // namespace

// (dw [C, 1, kh, kw], db [C] or an empty tensor) of a 'valid' depthwise convolution of xpad with dilation d.
// dy: [B, C, H, W], xpad: [B, C, H + d (kh - 1), W + d (kw - 1)], both float32 with unit channel stride.
std::vector<at::Tensor> dwconv_wgrad(const at::Tensor& dy, const at::Tensor& xpad, int64_t kh, int64_t kw,
                                     int64_t d, bool bias) {
  check_map(dy, "dy");
  check_map(xpad, "xpad");
  TORCH_CHECK(kh >= 1 && kw >= 1, "kernel_size must be >= 1, got (", kh, ", ", kw, ")");
  TORCH_CHECK(d >= 1, "dilation must be >= 1, got ", d);
  const int64_t B = dy.size(0), C = dy.size(1), H = dy.size(2), W = dy.size(3);
  TORCH_CHECK(xpad.size(0) == B && xpad.size(1) == C && xpad.size(2) == H + d * (kh - 1) &&
              xpad.size(3) == W + d * (kw - 1),
              "xpad must be [B, C, H + dilation (kh - 1), W + dilation (kw - 1)] = [", B, ", ", C, ", ",
              H + d * (kh - 1), ", ", W + d * (kw - 1), "], got ", xpad.sizes());
  const int64_t cp = (C + 15) / 16 * 16, taps = kh * kw, slots = taps + (bias ? 1 : 0);
  auto dw = at::zeros({C, 1, kh, kw}, dy.options());
  auto db = bias ? at::zeros({C}, dy.options()) : at::empty({0}, dy.options());
  const int64_t rows = B * H;
  if (rows == 0 || W == 0 || C == 0) return {dw, db};

  // chunks of consecutive (b, y) rows: a function of the shape only (deterministic for any thread count)
  const int64_t per_chunk = std::max((rows + kMaxChunks - 1) / kMaxChunks, (kMinChunkPixels + W - 1) / W);
  const int64_t chunks = (rows + per_chunk - 1) / per_chunk;
  auto part = at::zeros({chunks, slots, cp}, dy.options());
  float* pp = part.data_ptr<float>();
  const Map g{dy.data_ptr<float>(), dy.stride(0), dy.stride(2), dy.stride(3)};
  const Map x{xpad.data_ptr<float>(), xpad.stride(0), xpad.stride(2), xpad.stride(3)};

  const RowTaps* table = kRowTaps[d <= kMaxD ? d : 0].data();
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      float* acc = pp + k * slots * cp;
      for (int64_t row = k * per_chunk; row < std::min(rows, (k + 1) * per_chunk); ++row) {
        const int64_t b = row / H, y = row % H;
        const float* dyr = g.p + b * g.sb + y * g.sh;
        for (int64_t i = 0; i < kh; ++i) {
          const float* xr = x.p + b * x.sb + (y + i * d) * x.sh;
          for (int64_t c = 0; c < C; c += 16) {
            const __mmask16 km = lanes(C - c);
            for (int64_t j0 = 0; j0 < kw; j0 += kTaps) {
              const int nt = (int)std::min<int64_t>(kTaps, kw - j0);
              table[nt - 1](acc + (i * kw + j0) * cp + c, cp, xr + c + j0 * d * x.sw, dyr + c, x.sw, g.sw, W, d, km);
            }
            if (bias && i == 0) row_sum(acc + taps * cp + c, dyr + c, g.sw, W, km);
          }
        }
      }
    }
  });

  // sum the chunks in order, then [slot, c] -> dw[c, 0, i, j]
  at::parallel_for(0, slots, 1, [&](int64_t begin, int64_t end) {
    float* dwp = dw.data_ptr<float>();
    for (int64_t s = begin; s < end; ++s) {
      float* out = s < taps ? nullptr : db.data_ptr<float>();
      for (int64_t c = 0; c < cp; c += 16) {
        __m512 a = _mm512_loadu_ps(pp + s * cp + c);
        for (int64_t k = 1; k < chunks; ++k) a = _mm512_add_ps(a, _mm512_loadu_ps(pp + (k * slots + s) * cp + c));
        alignas(64) float v[16];
        _mm512_store_ps(v, a);
        for (int64_t l = 0; l < std::min<int64_t>(16, C - c); ++l) {
          if (out) out[c + l] = v[l];
          else dwp[(c + l) * taps + s] = v[l];
        }
      }
    }
  });
  return {dw, db};
}
