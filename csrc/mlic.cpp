// Op schemas, the Autocast kernels, the NVRTC launcher and the Python module (the front
// end's validation and geometry: ops/frontend.cpp). The back ends register their kernels
// in their own files:
// CPU (ops/cpu/ops_cpu.cpp), CUDA (ops/cuda/ops_cuda.cu, or ops/nvrtc/ops_nvrtc.cpp in a
// build without nvcc), and the test-only namespaces mlic_emulated_cuda (the CUDA back end
// run on the host for CPU tensors) and mlic_nvrtc (CUDA tensors through NVRTC).
#include <torch/extension.h>
#include <torch/library.h>

#include <mutex>
#include <string>

#include "ops/frontend.h"

namespace mlic {

// ---------------------------------------------------------------------------- NVRTC launcher

namespace {
std::mutex launcher_mutex;
pybind11::object* launcher = nullptr;  // leaked on purpose: Python may be gone at exit
}  // namespace

void nvrtc_launch(const std::string& name_expr, const std::string& element_type, const int64_t grid[3],
                  const int64_t block[3], int device_index, void** params) {
  pybind11::gil_scoped_acquire gil;
  pybind11::object fn;
  {
    std::lock_guard<std::mutex> lock(launcher_mutex);
    TORCH_CHECK(launcher != nullptr,
                "mlic: CUDA tensors need the NVRTC path (the extension was built without nvcc), whose launcher "
                "is not set: import mlic.ops");
    fn = *launcher;
  }
  fn(name_expr, element_type, pybind11::make_tuple(grid[0], grid[1], grid[2]),
     pybind11::make_tuple(block[0], block[1], block[2]), device_index, reinterpret_cast<intptr_t>(params));
}

namespace {

void set_nvrtc_launcher(pybind11::object fn) {
  std::lock_guard<std::mutex> lock(launcher_mutex);
  if (launcher == nullptr) launcher = new pybind11::object();
  *launcher = std::move(fn);
}

// ---------------------------------------------------------------------------- schemas, Autocast

void define_ops(torch::Library& m) {
  m.def(
      "roi_pool(Tensor features, Tensor rois, int pooled_h, int pooled_w, float spatial_scale=1.0, "
      "float score_scale=1.0, float score_bias=0.0, bool deterministic=False) -> (Tensor, Tensor)");
  m.def(
      "roi_spp(Tensor features, Tensor rois, int[] levels_h, int[] levels_w, float spatial_scale=1.0, "
      "float score_scale=1.0, float score_bias=0.0, bool deterministic=False) -> (Tensor, Tensor)");
  // The backward ops are internal: the ops' autograd calls them with the forward's argmax.
  m.def(
      "roi_spp_backward(Tensor grad, Tensor rois, Tensor argmax, int[] levels_h, int[] levels_w, int batch, "
      "int channels, int height, int width, float spatial_scale, float score_scale, float score_bias, "
      "bool deterministic) -> Tensor");
  m.def("spp(Tensor x, int pyramid_height, str mode=\"max\") -> (Tensor, Tensor)");
  m.def(
      "spp_backward(Tensor grad, Tensor argmax, int pyramid_height, str mode, int batch, int channels, int height, "
      "int width) -> Tensor");
  m.def(
      "caffe_pool2d(Tensor x, int[2] kernel_size, int[2] stride, int[2] padding, str mode=\"max\") "
      "-> (Tensor, Tensor)");
  m.def(
      "caffe_pool2d_backward(Tensor grad, Tensor argmax, int[2] kernel_size, int[2] stride, int[2] padding, "
      "str mode, int batch, int channels, int height, int width) -> Tensor");
  m.def("wsddn_two_stream(Tensor cls_logits, Tensor det_logits) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "wsddn_two_stream_backward(Tensor? grad_image, Tensor? grad_region, Tensor cls_prob, Tensor det_prob) "
      "-> (Tensor, Tensor)");
}

// Autocast: the ops compute in float32 (their float16/bfloat16 inputs are cast up) and
// return float32, as autocast does for the ops on its float32 list; the casts are part
// of the autograd graph, so gradients reach the inputs in their own dtype.
void autocast_to_float(const c10::OperatorHandle& op, torch::jit::Stack* stack) {
  const size_t n = op.schema().arguments().size();
  for (auto it = stack->end() - static_cast<std::ptrdiff_t>(n); it != stack->end(); ++it) {
    if (!it->isTensor()) continue;
    const Tensor t = it->toTensor();
    if (t.defined() && (t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16)) *it = t.to(at::kFloat);
  }
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  op.callBoxed(stack);
}

void register_autocast(torch::Library& m) {
  for (const char* name : {"roi_pool", "roi_spp", "spp", "caffe_pool2d", "wsddn_two_stream"})
    m.impl(name, torch::CppFunction::makeFromBoxedFunction<&autocast_to_float>());
}

}  // namespace
}  // namespace mlic

TORCH_LIBRARY(mlic, m) { mlic::define_ops(m); }
TORCH_LIBRARY(mlic_emulated_cuda, m) { mlic::define_ops(m); }
TORCH_LIBRARY(mlic_nvrtc, m) { mlic::define_ops(m); }

TORCH_LIBRARY_IMPL(mlic, AutocastCPU, m) { mlic::register_autocast(m); }
TORCH_LIBRARY_IMPL(mlic, AutocastCUDA, m) { mlic::register_autocast(m); }
TORCH_LIBRARY_IMPL(mlic_emulated_cuda, AutocastCPU, m) { mlic::register_autocast(m); }
TORCH_LIBRARY_IMPL(mlic_nvrtc, AutocastCUDA, m) { mlic::register_autocast(m); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "mlic compiled kernels (ops are registered under torch.ops.mlic)";
  m.def("compiled_with_cuda", []() {
#ifdef MLIC_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("_set_nvrtc_launcher", &mlic::set_nvrtc_launcher,
        "the Python function that launches NVRTC-compiled kernels (mlic.ops._nvrtc)");
}
