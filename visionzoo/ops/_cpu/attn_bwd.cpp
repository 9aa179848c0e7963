// Attention backward for many small fp32 problems on AVX-512 CPUs (visionzoo's CPU tiles).
//
// ATen's CPU flash backward recomputes P per 32-row query block with 5 small GEMMs and zero-fills
// dK / dV first; at neighborhood-attention tile shapes (Lq ~ 50-200, Lk ~ 150-400, hundreds of
// (batch, head, tile) problems) it costs 2.2-3x its forward, plus copies of the tiles in and out.
// This kernel does the same math per problem (handed to threads one at a time, no atomics):
//   P  = exp(scale * Q K^T + mask - lse)           (recomputed from the forward's log-sum-exp)
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = scale dS K,  dK = scale dS^T Q
// with MKL's sgemm (the BLAS ATen links) on whole query blocks, AVX-512 exp (SLEEF, as ATen), and
//   * key spans: a block's GEMMs skip the keys its mask rows hide entirely (banded NA masks);
//   * row maps: dO read from, and dQ / dK / dV written or summed into, the caller's token map through
//     each slot's map row, so the caller copies no tiles.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <vector>

extern "C" void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                       const int*, const float*, const int*, const float*, float*, const int*);
extern "C" __m512 Sleef_expf16_u10(__m512);

namespace {

// column-major BLAS: C (m x n) = alpha op(A) op(B) + beta C
void gemm(char ta, char tb, int64_t m, int64_t n, int64_t k, float alpha, const float* a, int64_t lda,
          const float* b, int64_t ldb, float beta, float* c, int64_t ldc) {
  const int mi = m, ni = n, ki = k, la = lda, lb = ldb, lc = ldc;
  sgemm_(&ta, &tb, &mi, &ni, &ki, &alpha, a, &la, b, &lb, &beta, c, &lc);
}

inline __mmask16 tail(int64_t left) { return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1); }

// s <- exp(s + mask - lse) over one row of n logits
void exp_row(float* s, const float* mask, float lse, int64_t n) {
  const __m512 l = _mm512_set1_ps(lse);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 km = tail(n - j);
    __m512 x = _mm512_maskz_loadu_ps(km, s + j);
    if (mask) x = _mm512_add_ps(x, _mm512_maskz_loadu_ps(km, mask + j));
    _mm512_mask_storeu_ps(s + j, km, Sleef_expf16_u10(_mm512_sub_ps(x, l)));
  }
}

// dp <- p * (dp - delta) over one row
void dsoftmax_row(const float* p, float* dp, float delta, int64_t n) {
  const __m512 d = _mm512_set1_ps(delta);
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 km = tail(n - j);
    const __m512 g = _mm512_sub_ps(_mm512_maskz_loadu_ps(km, dp + j), d);
    _mm512_mask_storeu_ps(dp + j, km, _mm512_mul_ps(_mm512_maskz_loadu_ps(km, p + j), g));
  }
}

float dot(const float* a, const float* b, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 km = tail(n - j);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(km, a + j), _mm512_maskz_loadu_ps(km, b + j), acc);
  }
  return _mm512_reduce_add_ps(acc);
}

// [lo, hi) of the columns with an entry other than -inf (NaN counts) in any of rows 0..rows-1 (row stride ld)
// of n columns; lo == hi when every entry is -inf
std::pair<int64_t, int64_t> finite_span(const float* mask, int64_t ld, int64_t rows, int64_t n) {
  const __m512 ninf = _mm512_set1_ps(-INFINITY);
  int64_t lo = n, hi = 0;
  for (int64_t i = 0; i < rows; ++i) {
    const float* r = mask + i * ld;
    for (int64_t j = 0; j < std::min(lo, n); j += 16) {  // first finite column left of lo
      const __mmask16 hit = _mm512_mask_cmp_ps_mask(tail(n - j), _mm512_maskz_loadu_ps(tail(n - j), r + j), ninf,
                                                    _CMP_NEQ_UQ);
      if (hit) { lo = std::min(lo, j + (int64_t)__builtin_ctz(hit)); break; }
    }
    for (int64_t j = n; j > hi; j -= 16) {  // last finite column right of hi
      const int64_t j0 = std::max<int64_t>(j - 16, 0);
      const __mmask16 km = tail(j - j0);
      const __mmask16 hit = _mm512_mask_cmp_ps_mask(km, _mm512_maskz_loadu_ps(km, r + j0), ninf, _CMP_NEQ_UQ);
      if (hit) { hi = std::max(hi, j0 + 32 - (int64_t)__builtin_clz((unsigned)hit)); break; }
    }
  }
  return lo < hi ? std::make_pair(lo, hi) : std::make_pair(int64_t(0), int64_t(0));
}

void check(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), name, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dim && t.stride(-1) == 1, name, " must be ", dim, "-D with a unit last stride");
  // rows go to sgemm with the row stride as leading dimension: rows must not overlap
  TORCH_CHECK(t.size(dim - 2) <= 1 || t.stride(dim - 2) >= t.size(dim - 1), name,
              " rows must not overlap (row stride >= row length)");
}

// Token-map rows of the slots of every problem: problem u (of the B * H) reads / writes map u / P of a
// [N, R, C] map through rows[u % P, i], the map row of its slot i (-1: the slot has none).
struct RowMap {
  const int64_t* rows = nullptr;
  int64_t P = 0;
  bool on() const { return rows != nullptr; }
};

RowMap row_map(const c10::optional<at::Tensor>& t, int64_t problems, int64_t L, int64_t R, const char* name) {
  RowMap m;
  if (!t.has_value() || !t->defined()) return m;
  TORCH_CHECK(t->scalar_type() == at::kLong && t->device().is_cpu() && t->dim() == 2 && t->size(1) == L &&
              t->is_contiguous() && t->size(0) > 0 && problems % t->size(0) == 0,
              name, " must be a contiguous int64 CPU [P, ", L, "] with P dividing the ", problems, " problems");
  TORCH_CHECK(t->numel() == 0 || (t->min().item<int64_t>() >= -1 && t->max().item<int64_t>() < R),
              name, " must hold rows in [-1, ", R, ")");
  m.rows = t->data_ptr<int64_t>();
  m.P = t->size(0);
  return m;
}

// row i of a [L, C] block <-> the map row it stands for (zeros in, nothing out for row -1)
void gather_rows(float* dst, const float* map, const int64_t* rows, int64_t L, int64_t C) {
  for (int64_t i = 0; i < L; ++i) {
    if (rows[i] < 0) std::fill(dst + i * C, dst + (i + 1) * C, 0.f);
    else std::copy(map + rows[i] * C, map + (rows[i] + 1) * C, dst + i * C);
  }
}

void scatter_rows(float* map, const float* src, const int64_t* rows, int64_t L, int64_t C) {
  for (int64_t i = 0; i < L; ++i)
    if (rows[i] >= 0) std::copy(src + i * C, src + (i + 1) * C, map + rows[i] * C);
}

// y += x over a row of C floats
void add_row(float* y, const float* x, int64_t C) {
  for (int64_t j = 0; j < C; j += 16) {
    const __mmask16 km = tail(C - j);
    _mm512_mask_storeu_ps(y + j, km, _mm512_add_ps(_mm512_maskz_loadu_ps(km, y + j), _mm512_maskz_loadu_ps(km, x + j)));
  }
}

void add_rows(float* map, const float* src, const int64_t* rows, int64_t L, int64_t C) {
  for (int64_t i = 0; i < L; ++i)
    if (rows[i] >= 0) add_row(map + rows[i] * C, src + i * C, C);
}

}  // namespace

// q, out: [B, H, Lq, D | Dv]; k, v: [B, H, Lk, D | Dv]; lse: [B, H, Lq] (natural log, of the scaled and masked
// logits); mask: additive [B, H, Lq, Lk] float32 (stride 0 for broadcast dims, unit last stride) or None.
// block: query rows per block (keys masked for a whole block are skipped).
// dout: [B, H, Lq, Dv] like out, or, with q_rows, a token map [N, R, Dv] (rows Dv floats apart) read through
// q_rows (-1: zero gradient); dq is then written to a map [N, R, D] through the same rows (every row of the map
// must be some slot's). With kv_rows, dk and dv are written to maps [N, R, D | Dv] likewise (each map row exactly
// one slot's: disjoint halos), or with kv_group > 0 summed into zero maps (overlapping halos): problems
// whose rows may coincide must lie in the same run of kv_group consecutive problems, which one thread
// processes in order. Otherwise dq [B, H, Lq, D], dk [B, H, Lk, D], dv [B, H, Lk, Dv], contiguous.
std::vector<at::Tensor> attn_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                 const c10::optional<at::Tensor>& mask_opt, double scale_d, int64_t block,
                                 const c10::optional<at::Tensor>& q_rows, const c10::optional<at::Tensor>& kv_rows,
                                 int64_t map_rows, int64_t kv_group) {
  check(q, "q", 4); check(k, "k", 4); check(v, "v", 4); check(out, "out", 4);
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.device().is_cpu() && lse.dim() == 3,
              "lse must be a float32 CPU tensor [B, H, Lq]");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  TORCH_CHECK(k.sizes() == at::IntArrayRef({B, H, Lk, D}) && v.sizes() == at::IntArrayRef({B, H, Lk, Dv}) &&
              out.sizes() == at::IntArrayRef({B, H, Lq, Dv}) && lse.sizes() == at::IntArrayRef({B, H, Lq}),
              "attn_bwd: inconsistent shapes");
  const RowMap qmap = row_map(q_rows, B * H, Lq, map_rows, "q_rows");
  const RowMap kvmap = row_map(kv_rows, B * H, Lk, map_rows, "kv_rows");
  const int64_t N = qmap.on() ? B * H / qmap.P : 0;
  TORCH_CHECK(!kvmap.on() || qmap.on(), "kv_rows needs q_rows");
  TORCH_CHECK(!kvmap.on() || kvmap.P == qmap.P, "q_rows and kv_rows must have as many rows");
  TORCH_CHECK(kv_group >= 0 && (kv_group == 0 || (kvmap.on() && (B * H) % kv_group == 0)),
              "kv_group must be 0, or with kv_rows divide the ", B * H, " problems");
  const int64_t unit = std::max<int64_t>(kv_group, 1);
  if (qmap.on()) {
    check(dout, "dout", 3);
    TORCH_CHECK(dout.size(0) == N && dout.size(1) == map_rows && dout.size(2) == Dv && dout.stride(1) == Dv,
                "dout must be a token map [", N, ", ", map_rows, ", ", Dv, "] with rows Dv floats apart");
  } else {
    check(dout, "dout", 4);
    TORCH_CHECK(dout.sizes() == out.sizes(), "dout must have out's shape");
  }
  const bool has_mask = mask_opt.has_value() && mask_opt->defined();
  if (has_mask) {
    check(*mask_opt, "mask", 4);
    TORCH_CHECK(mask_opt->sizes() == at::IntArrayRef({B, H, Lq, Lk}), "mask must be expanded to [B, H, Lq, Lk]");
  }
  auto dq = qmap.on() ? at::empty({N, map_rows, D}, q.options()) : at::empty({B, H, Lq, D}, q.options());
  const auto kv_out = [&](int64_t C) {
    if (!kvmap.on()) return at::empty({B, H, Lk, C}, q.options());
    return kv_group ? at::zeros({N, map_rows, C}, q.options()) : at::empty({N, map_rows, C}, q.options());
  };
  auto dk = kv_out(D), dv = kv_out(Dv);
  const float scale = static_cast<float>(scale_d);
  const int64_t qblock = std::max<int64_t>(1, std::min<int64_t>(Lq, block));
  const int64_t nblk = (Lq + qblock - 1) / qblock;
  const float *qd = q.data_ptr<float>(), *kd = k.data_ptr<float>(), *vd = v.data_ptr<float>();
  const float *od = out.data_ptr<float>(), *dod = dout.data_ptr<float>(), *ld = lse.data_ptr<float>();
  const float* md = has_mask ? mask_opt->data_ptr<float>() : nullptr;
  const int64_t ms0 = has_mask ? mask_opt->stride(0) : 0, ms1 = has_mask ? mask_opt->stride(1) : 0;
  const int64_t ms2 = has_mask ? mask_opt->stride(2) : 0;
  float *dqd = dq.data_ptr<float>(), *dkd = dk.data_ptr<float>(), *dvd = dv.data_ptr<float>();
  const int64_t qs = q.stride(2), ks = k.stride(2), vs = v.stride(2), os = out.stride(2);
  const int64_t ls = lse.stride(2);

  // key span of every query block, once per distinct mask slice (a broadcast mask is scanned once):
  // keys outside it are masked for the whole block, so its GEMMs skip them
  const int64_t nb = ms0 ? B : 1, nh = ms1 ? H : 1;
  std::vector<std::pair<int64_t, int64_t>> spans(nb * nh * nblk, {0, Lk});
  if (has_mask) {
    at::parallel_for(0, nb * nh * nblk, 1, [&](int64_t begin, int64_t end) {
      for (int64_t u = begin; u < end; ++u) {
        const int64_t slice = u / nblk, m0 = (u % nblk) * qblock;
        const float* M = md + (slice / nh) * ms0 + (slice % nh) * ms1 + m0 * ms2;
        spans[u] = finite_span(M, ms2, std::min(qblock, Lq - m0), Lk);
      }
    });
  }

  // problems are handed out one unit at a time (not split evenly up front): spans make their costs unequal,
  // and on a shared machine a thread that loses its core does not hold up the rest
  std::atomic<int64_t> next{0};
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    // P and dP of one query block (stay in L2); with row maps, this problem's dO / dQ / dK / dV
    std::vector<float> buf(2 * qblock * Lk + (qmap.on() ? Lq * (Dv + D) : 0) + (kvmap.on() ? Lk * (D + Dv) : 0));
    float* P = buf.data();
    float* dP = P + qblock * Lk;
    float* local = dP + qblock * Lk;
    for (int64_t g; (g = next.fetch_add(1, std::memory_order_relaxed)) < B * H / unit;)
    for (int64_t u = g * unit; u < (g + 1) * unit; ++u) {
      const int64_t b = u / H, h = u % H;
      const float* Q = qd + b * q.stride(0) + h * q.stride(1);
      const float* K = kd + b * k.stride(0) + h * k.stride(1);
      const float* V = vd + b * v.stride(0) + h * v.stride(1);
      const float* O = od + b * out.stride(0) + h * out.stride(1);
      const float* L = ld + b * lse.stride(0) + h * lse.stride(1);
      const float* M = has_mask ? md + b * ms0 + h * ms1 : nullptr;
      const auto* span = spans.data() + ((ms0 ? b : 0) * nh + (ms1 ? h : 0)) * nblk;
      const int64_t n_map = qmap.on() ? u / qmap.P : 0;
      const int64_t* qr = qmap.on() ? qmap.rows + (u % qmap.P) * Lq : nullptr;
      const int64_t* kr = kvmap.on() ? kvmap.rows + (u % kvmap.P) * Lk : nullptr;
      const float* dO;
      int64_t dos;
      float *dQ, *dK, *dV;
      if (qmap.on()) {
        float* g = local;
        gather_rows(g, dod + n_map * dout.stride(0), qr, Lq, Dv);
        dO = g, dos = Dv, dQ = g + Lq * Dv;
      } else {
        dO = dod + b * dout.stride(0) + h * dout.stride(1), dos = dout.stride(2), dQ = dqd + u * Lq * D;
      }
      if (kvmap.on()) {
        dK = local + (qmap.on() ? Lq * (Dv + D) : 0), dV = dK + Lk * D;
      } else {
        dK = dkd + u * Lk * D, dV = dvd + u * Lk * Dv;
      }
      // dK, dV: a first block spanning every key writes them (beta = 0), later blocks add; otherwise zero first
      const bool write_first = nblk > 0 && span[0].first == 0 && span[0].second == Lk;
      if (!write_first) {
        std::fill(dK, dK + Lk * D, 0.f);
        std::fill(dV, dV + Lk * Dv, 0.f);
      }
      for (int64_t blk = 0; blk < nblk; ++blk) {
        const int64_t m0 = blk * qblock, mb = std::min(qblock, Lq - m0);
        const int64_t lo = span[blk].first, n = span[blk].second - lo;
        if (n == 0) {  // every key masked for the block (no softmax mass): zero dQ, nothing else
          std::fill(dQ + m0 * D, dQ + (m0 + mb) * D, 0.f);
          continue;
        }
        const float beta = blk == 0 && write_first ? 0.f : 1.f;
        const float *Qm = Q + m0 * qs, *dOm = dO + m0 * dos, *Kl = K + lo * ks, *Vl = V + lo * vs;
        gemm('T', 'N', n, mb, D, scale, Kl, ks, Qm, qs, 0.f, P, n);  // P = scale Q K^T
        for (int64_t i = 0; i < mb; ++i) exp_row(P + i * n, M ? M + (m0 + i) * ms2 + lo : nullptr, L[(m0 + i) * ls], n);
        gemm('N', 'T', Dv, n, mb, 1.f, dOm, dos, P, n, beta, dV + lo * Dv, Dv);  // dV (+)= P^T dO
        gemm('T', 'N', n, mb, Dv, 1.f, Vl, vs, dOm, dos, 0.f, dP, n);            // dP = dO V^T
        for (int64_t i = 0; i < mb; ++i)
          dsoftmax_row(P + i * n, dP + i * n, dot(dOm + i * dos, O + (m0 + i) * os, Dv), n);
        gemm('N', 'N', D, mb, n, scale, Kl, ks, dP, n, 0.f, dQ + m0 * D, D);  // dQ = scale dS K
        gemm('N', 'T', D, n, mb, scale, Qm, qs, dP, n, beta, dK + lo * D, D);  // dK (+)= scale dS^T Q
      }
      if (qmap.on()) scatter_rows(dqd + n_map * map_rows * D, dQ, qr, Lq, D);
      if (kvmap.on()) {
        const auto put = kv_group ? add_rows : scatter_rows;
        put(dkd + n_map * map_rows * D, dK, kr, Lk, D);
        put(dvd + n_map * map_rows * Dv, dV, kr, Lk, Dv);
      }
    }
  });
  return {dq, dk, dv};
}

// out[b, dst_rows[g, i]] += src[b, src_rows[g, i]] for rows of C floats, into zeros [B, out_rows, C].
// src: [B, R, C] with unit last stride and row stride C. Groups g must write disjoint output rows (e.g. one
// group per head): (batch, group) pairs then run in parallel without atomics, each in index order.
at::Tensor scatter_add_rows(const at::Tensor& src, const at::Tensor& src_rows, const at::Tensor& dst_rows,
                            int64_t out_rows) {
  check(src, "src", 3);
  const int64_t B = src.size(0), R = src.size(1), C = src.size(2);
  TORCH_CHECK(src.stride(1) == C, "src rows must be C floats apart");
  TORCH_CHECK(src_rows.scalar_type() == at::kLong && dst_rows.scalar_type() == at::kLong && src_rows.dim() == 2 &&
              src_rows.sizes() == dst_rows.sizes() && src_rows.is_contiguous() && dst_rows.is_contiguous(),
              "src_rows and dst_rows must be contiguous int64 [G, n] of equal shape");
  TORCH_CHECK(src_rows.numel() == 0 || (src_rows.min().item<int64_t>() >= 0 && src_rows.max().item<int64_t>() < R &&
              dst_rows.min().item<int64_t>() >= 0 && dst_rows.max().item<int64_t>() < out_rows),
              "row index out of range");
  auto out = at::zeros({B, out_rows, C}, src.options());
  const int64_t G = src_rows.size(0), n = src_rows.size(1), sb = src.stride(0);
  const float* sp = src.data_ptr<float>();
  float* op = out.data_ptr<float>();
  const int64_t *sr = src_rows.data_ptr<int64_t>(), *dr = dst_rows.data_ptr<int64_t>();
  at::parallel_for(0, B * G, 1, [&](int64_t begin, int64_t end) {
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / G, g = u % G;
      const float* s = sp + b * sb;
      float* o = op + b * out_rows * C;
      for (int64_t i = g * n; i < (g + 1) * n; ++i) add_row(o + dr[i] * C, s + sr[i] * C, C);
    }
  });
  return out;
}
