// Host-side declarations shared by the op front ends (mlic.cpp) and the CPU / CUDA back ends.
#pragma once
#include <ATen/ATen.h>

#include <string>
#include <tuple>
#include <vector>

namespace mlic {

using at::Tensor;

// Accumulation type of the kernels: Caffe computes in the blob's own type, so float
// stays float; half and bfloat16 accumulate in float.
template <typename T> struct Acc { using type = T; };
template <> struct Acc<at::Half> { using type = float; };
template <> struct Acc<at::BFloat16> { using type = float; };

struct RoiArgs {
  std::vector<int> lv;  // 3 ints per level: h, w, cells before the level
  int S = 0;            // cells per channel of one RoI
  double spatial_scale = 1, score_scale = 1, score_bias = 0;
};

struct PoolArgs {
  std::vector<int> lp;  // 9 ints per level: kh, kw, sh, sw, pad_h, pad_w, oh, ow, cells before
  int S = 0;
  int mode = 0;         // 0 max, 1 ave
};

// CPU back end (ops_cpu.cpp).
std::tuple<Tensor, Tensor> roi_forward_cpu(const Tensor& feat, const Tensor& rois, const RoiArgs& a);
Tensor roi_backward_cpu(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const RoiArgs& a,
                        at::IntArrayRef in_shape);
std::tuple<Tensor, Tensor> pool_forward_cpu(const Tensor& x, const PoolArgs& a);
Tensor pool_backward_cpu(const Tensor& grad, const Tensor& argmax, const PoolArgs& a, at::IntArrayRef in_shape);
std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward_cpu(const Tensor& cls, const Tensor& det);
std::tuple<Tensor, Tensor> two_stream_backward_cpu(const Tensor& g_image, const Tensor& g_region, const Tensor& pc,
                                                   const Tensor& pd);
// x86-64 level (4: AVX-512, 3: AVX2 + FMA, 1: baseline) of the CPU loops that have one copy
// per level; the cap (for tests and comparisons) lowers it.
int cpu_simd_level();
int set_cpu_simd_level_cap(int64_t cap);

// Op front ends (mlic.cpp): validation, then the back end of the tensors' device.
std::tuple<Tensor, Tensor> roi_spp_op(const Tensor& features, const Tensor& rois, at::IntArrayRef levels_h,
                                      at::IntArrayRef levels_w, double spatial_scale, double score_scale,
                                      double score_bias, bool deterministic);
std::tuple<Tensor, Tensor> roi_pool_op(const Tensor& features, const Tensor& rois, int64_t pooled_h, int64_t pooled_w,
                                       double spatial_scale, double score_scale, double score_bias,
                                       bool deterministic);
Tensor roi_spp_backward_op(const Tensor& grad, const Tensor& rois, const Tensor& argmax, at::IntArrayRef levels_h,
                           at::IntArrayRef levels_w, int64_t batch, int64_t channels, int64_t height, int64_t width,
                           double spatial_scale, double score_scale, double score_bias, bool deterministic);
std::tuple<Tensor, Tensor> spp_op(const Tensor& x, int64_t pyramid_height, c10::string_view mode);
Tensor spp_backward_op(const Tensor& grad, const Tensor& argmax, int64_t pyramid_height, c10::string_view mode,
                       int64_t batch, int64_t channels, int64_t height, int64_t width);
std::tuple<Tensor, Tensor> caffe_pool2d_op(const Tensor& x, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                           at::IntArrayRef padding, c10::string_view mode);
Tensor caffe_pool2d_backward_op(const Tensor& grad, const Tensor& argmax, at::IntArrayRef kernel_size,
                                at::IntArrayRef stride, at::IntArrayRef padding, c10::string_view mode, int64_t batch,
                                int64_t channels, int64_t height, int64_t width);
std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_op(const Tensor& cls, const Tensor& det);
std::tuple<Tensor, Tensor> two_stream_backward_op(const std::optional<Tensor>& g_image,
                                                  const std::optional<Tensor>& g_region, const Tensor& pc,
                                                  const Tensor& pd);
// Autograd kernel of wsddn_two_stream (calls the op below autograd, then its backward op).
std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_autograd(const Tensor& cls, const Tensor& det);

}  // namespace mlic

// The CUDA back end (cuda/host_side.h over ops_cuda.cu: x_cuda) and the same code run on
// the host for CPU tensors while set_cuda_emulation(true) (emulation/ops_emulated.cpp:
// x_emu); same contracts as the CPU back end.
#define MLIC_DECLARE_CUDA_BACKEND(S)                                                                              \
  std::tuple<Tensor, Tensor> roi_forward_##S(const Tensor& feat, const Tensor& rois, const RoiArgs& a);         \
  Tensor roi_backward_##S(const Tensor& grad, const Tensor& rois, const Tensor& argmax, const RoiArgs& a,        \
                          at::IntArrayRef in_shape, bool deterministic);                                      \
  std::tuple<Tensor, Tensor> pool_forward_##S(const Tensor& x, const PoolArgs& a);                              \
  Tensor pool_backward_##S(const Tensor& grad, const Tensor& argmax, const PoolArgs& a, at::IntArrayRef in_shape); \
  std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward_##S(const Tensor& cls, const Tensor& det);      \
  std::tuple<Tensor, Tensor> two_stream_backward_##S(const Tensor& g_image, const Tensor& g_region,             \
                                                     const Tensor& pc, const Tensor& pd);

namespace mlic {
MLIC_DECLARE_CUDA_BACKEND(emu)
#ifdef MLIC_WITH_CUDA
MLIC_DECLARE_CUDA_BACKEND(cuda)
#endif
bool cuda_emulation();
bool set_cuda_emulation(bool on);
}  // namespace mlic
#undef MLIC_DECLARE_CUDA_BACKEND
