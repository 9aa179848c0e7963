// The Python module of visionzoo's C++ CPU kernels: one binding list for every source file.
#include <torch/extension.h>

#include <vector>

std::vector<at::Tensor> attn_bwd(const at::Tensor& dout, const at::Tensor& q, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                 const c10::optional<at::Tensor>& mask_opt, double scale, int64_t block,
                                 const c10::optional<at::Tensor>& q_rows, const c10::optional<at::Tensor>& kv_rows,
                                 int64_t map_rows, int64_t kv_group);
at::Tensor scatter_add_rows(const at::Tensor& src, const at::Tensor& src_rows, const at::Tensor& dst_rows,
                            int64_t out_rows);
std::vector<at::Tensor> dwconv_wgrad(const at::Tensor& dy, const at::Tensor& xpad, int64_t kh, int64_t kw,
                                     int64_t d, bool bias);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("attn_bwd", &attn_bwd, "attention backward over many small fp32 problems (AVX-512)");
  m.def("scatter_add_rows", &scatter_add_rows, "grouped row scatter-add (disjoint output rows per group)");
  m.def("dwconv_wgrad", &dwconv_wgrad, "depthwise convolution weight / bias gradient, channels-last fp32 (AVX-512)");
}
