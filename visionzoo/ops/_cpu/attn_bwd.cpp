// Attention backward for many small fp32 problems on AVX-512 CPUs (visionzoo's CPU tiles).
//
// ATen's CPU flash backward recomputes P per 32-row query block with 5 small GEMMs and zero-fills
// dK / dV first; at neighborhood-attention tile shapes (Lq ~ 50-200, Lk ~ 150-400, hundreds of
// (batch, head, tile) problems) it costs 2.2-3x its forward. This kernel does the same math per
// problem (one OpenMP task each, no atomics: every problem owns its dK / dV rows):
//   P  = exp(scale * Q K^T + mask - lse)           (recomputed from the forward's log-sum-exp)
//   dV = P^T dO,  dP = dO V^T,  dS = P * (dP - rowsum(dO * O)),  dQ = scale * dS K,  dK = scale * dS^T Q
// with MKL's sgemm (the BLAS ATen links) on whole query blocks, AVX-512 exp (SLEEF, as ATen) and no
// zero fill (the first block writes dK / dV with beta = 0).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include <algorithm>
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

void check(const at::Tensor& t, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), name, " must be a float32 CPU tensor");
  TORCH_CHECK(t.dim() == dim && t.stride(-1) == 1, name, " must be ", dim, "-D with a unit last stride");
}

}  // namespace

// dout, q, out: [B, H, Lq, D | Dv]; k, v: [B, H, Lk, D | Dv]; lse: [B, H, Lq] (natural log, of the scaled
// and masked logits); mask: additive [B, H, Lq, Lk] float32 (stride 0 for broadcast dims, unit last stride)
// or None. Returns dq [B, H, Lq, D], dk [B, H, Lk, D], dv [B, H, Lk, Dv], contiguous.
std::vector<at::Tensor> attn_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                 const c10::optional<at::Tensor>& mask_opt, double scale_d) {
  check(dout, "dout", 4); check(q, "q", 4); check(k, "k", 4); check(v, "v", 4); check(out, "out", 4);
  TORCH_CHECK(lse.scalar_type() == at::kFloat && lse.dim() == 3, "lse must be float32 [B, H, Lq]");
  const int64_t B = q.size(0), H = q.size(1), Lq = q.size(2), D = q.size(3), Lk = k.size(2), Dv = v.size(3);
  TORCH_CHECK(k.sizes() == at::IntArrayRef({B, H, Lk, D}) && v.sizes() == at::IntArrayRef({B, H, Lk, Dv}) &&
              out.sizes() == at::IntArrayRef({B, H, Lq, Dv}) && dout.sizes() == out.sizes() &&
              lse.sizes() == at::IntArrayRef({B, H, Lq}), "attn_bwd: inconsistent shapes");
  const bool has_mask = mask_opt.has_value() && mask_opt->defined();
  if (has_mask) {
    check(*mask_opt, "mask", 4);
    TORCH_CHECK(mask_opt->sizes() == at::IntArrayRef({B, H, Lq, Lk}), "mask must be expanded to [B, H, Lq, Lk]");
  }
  auto dq = at::empty({B, H, Lq, D}, q.options());
  auto dk = at::empty({B, H, Lk, D}, q.options());
  auto dv = at::empty({B, H, Lk, Dv}, q.options());
  const float scale = static_cast<float>(scale_d);
  const int64_t qblock = std::max<int64_t>(1, std::min<int64_t>(Lq, 64));  // P and dP rows stay in L2
  const float *qd = q.data_ptr<float>(), *kd = k.data_ptr<float>(), *vd = v.data_ptr<float>();
  const float *od = out.data_ptr<float>(), *dod = dout.data_ptr<float>(), *ld = lse.data_ptr<float>();
  const float* md = has_mask ? mask_opt->data_ptr<float>() : nullptr;
  const int64_t ms0 = has_mask ? mask_opt->stride(0) : 0, ms1 = has_mask ? mask_opt->stride(1) : 0;
  const int64_t ms2 = has_mask ? mask_opt->stride(2) : 0;
  float *dqd = dq.data_ptr<float>(), *dkd = dk.data_ptr<float>(), *dvd = dv.data_ptr<float>();
  const int64_t qs = q.stride(2), ks = k.stride(2), vs = v.stride(2), os = out.stride(2), dos = dout.stride(2);
  const int64_t ls = lse.stride(2);

  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(2 * qblock * Lk);
    float* P = buf.data();
    float* dP = P + qblock * Lk;
    for (int64_t u = begin; u < end; ++u) {
      const int64_t b = u / H, h = u % H;
      const float* Q = qd + b * q.stride(0) + h * q.stride(1);
      const float* K = kd + b * k.stride(0) + h * k.stride(1);
      const float* V = vd + b * v.stride(0) + h * v.stride(1);
      const float* O = od + b * out.stride(0) + h * out.stride(1);
      const float* dO = dod + b * dout.stride(0) + h * dout.stride(1);
      const float* L = ld + b * lse.stride(0) + h * lse.stride(1);
      const float* M = has_mask ? md + b * ms0 + h * ms1 : nullptr;
      float* dQ = dqd + u * Lq * D;
      float* dK = dkd + u * Lk * D;
      float* dV = dvd + u * Lk * Dv;
      for (int64_t m0 = 0; m0 < Lq; m0 += qblock) {
        const int64_t mb = std::min(qblock, Lq - m0);
        const float beta = m0 == 0 ? 0.f : 1.f;  // dK, dV: the first block writes, later blocks add
        const float* Qm = Q + m0 * qs;
        const float* dOm = dO + m0 * dos;
        gemm('T', 'N', Lk, mb, D, scale, K, ks, Qm, qs, 0.f, P, Lk);  // P = scale Q K^T
        for (int64_t i = 0; i < mb; ++i) exp_row(P + i * Lk, M ? M + (m0 + i) * ms2 : nullptr, L[(m0 + i) * ls], Lk);
        gemm('N', 'T', Dv, Lk, mb, 1.f, dOm, dos, P, Lk, beta, dV, Dv);  // dV (+)= P^T dO
        gemm('T', 'N', Lk, mb, Dv, 1.f, V, vs, dOm, dos, 0.f, dP, Lk);   // dP = dO V^T
        for (int64_t i = 0; i < mb; ++i)
          dsoftmax_row(P + i * Lk, dP + i * Lk, dot(dOm + i * dos, O + (m0 + i) * os, Dv), Lk);
        gemm('N', 'N', D, mb, Lk, scale, K, ks, dP, Lk, 0.f, dQ + m0 * D, D);  // dQ = scale dS K
        gemm('N', 'T', D, Lk, mb, scale, Qm, qs, dP, Lk, beta, dK, D);         // dK (+)= scale dS^T Q
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
      for (int64_t i = g * n; i < (g + 1) * n; ++i) {
        const float* x = s + sr[i] * C;
        float* y = o + dr[i] * C;
        for (int64_t j = 0; j < C; j += 16) {
          const __mmask16 km = tail(C - j);
          _mm512_mask_storeu_ps(y + j, km, _mm512_add_ps(_mm512_maskz_loadu_ps(km, y + j),
                                                         _mm512_maskz_loadu_ps(km, x + j)));
        }
      }
    }
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attn_bwd", &attn_bwd, "attention backward over many small fp32 problems (AVX-512)");
  m.def("scatter_add_rows", &scatter_add_rows, "grouped row scatter-add (disjoint output rows per group)");
}
