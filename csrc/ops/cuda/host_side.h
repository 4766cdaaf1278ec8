// Host side of the CUDA back end, written once: compiled by nvcc into the GPU back end
// (cuda/ops_cuda.cu, MLIC_BACKEND_FN(x) = x_cuda) and by the C++ compiler over the host
// emulation of CUDA (emulation/ops_emulated.cpp, x_emu), so that the kernels and their
// launch geometry are tested on machines without a GPU. The includer provides
// MLIC_BACKEND_FN, MLIC_DEVICE_GUARD(device), current_stream(), launch() and
// launch_block_sync() (the latter for kernels that call __syncthreads).
#pragma once

namespace mlic {

#define MLIC_DISPATCH(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, TYPE, NAME, __VA_ARGS__)

namespace {

constexpr int kThreads = 256;

int blocks_for(int64_t n) {
  const int64_t b = (n + kThreads - 1) / kThreads;
  return static_cast<int>(b < 65536 * 8 ? (b > 0 ? b : 1) : 65536 * 8);
}

Tensor to_device_ints(const std::vector<int>& v, const at::Device& d) {
  return at::tensor(v, at::TensorOptions().dtype(at::kInt)).to(d);
}

template <typename T> at::ScalarType acc_dtype() { return c10::CppTypeToScalarType<typename Acc<T>::type>::value; }

}  // namespace

std::tuple<Tensor, Tensor> MLIC_BACKEND_FN(roi_forward)(const Tensor& feat_, const Tensor& rois_, const RoiArgs& a) {
  MLIC_DEVICE_GUARD(feat_.device());
  const Tensor feat = feat_.contiguous(), rois = rois_.contiguous();
  const int64_t K = rois.size(0);
  const int N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor out = at::empty({K, C * a.S}, feat.options());
  Tensor argmax = at::empty({K, C * a.S}, feat.options().dtype(at::kInt));
  if (K == 0) return {out, argmax};
  Tensor lv = to_device_ints(a.lv, feat.device());
  auto stream = current_stream();
  MLIC_DISPATCH(feat.scalar_type(), "mlic_roi_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    launch(roi_pool_forward_kernel<scalar_t, A>, blocks_for(out.numel()), kThreads, stream,
        feat.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), rois.size(1), K, N, C, H, W, lv.data_ptr<int>(),
        static_cast<int>(a.lv.size() / 3), a.S, static_cast<A>(a.spatial_scale), static_cast<A>(a.score_scale),
        static_cast<A>(a.score_bias), out.data_ptr<scalar_t>(), argmax.data_ptr<int>());
  });
  return {out, argmax};
}

Tensor MLIC_BACKEND_FN(roi_backward)(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, const RoiArgs& a,
                         at::IntArrayRef in_shape, bool deterministic) {
  MLIC_DEVICE_GUARD(grad_.device());
  const Tensor grad = grad_.contiguous(), rois = rois_.contiguous(), argmax = argmax_.contiguous();
  const int64_t K = rois.size(0);
  const int N = in_shape[0], C = in_shape[1], H = in_shape[2], W = in_shape[3];
  Tensor lv = to_device_ints(a.lv, grad.device());
  const int nlev = a.lv.size() / 3;
  auto stream = current_stream();
  Tensor result;
  MLIC_DISPATCH(grad.scalar_type(), "mlic_roi_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor acc;
    if (K == 0) {
      acc = at::zeros(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
    } else if (!deterministic) {
      acc = at::zeros(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
      launch(roi_pool_backward_atomic_kernel<scalar_t, A>, blocks_for(grad.numel()), kThreads, stream,
          grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), rois.size(1), argmax.data_ptr<int>(), K, N, C, H, W,
          lv.data_ptr<int>(), nlev, a.S, static_cast<A>(a.score_scale), static_cast<A>(a.score_bias),
          acc.data_ptr<A>());
    } else {
      // RoIs grouped by image, keeping their order inside an image.
      Tensor batch = rois.select(1, 0).to(at::kDouble).trunc().to(at::kLong);
      Tensor order = std::get<1>(batch.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false)).contiguous();
      Tensor starts = at::zeros({N + 1}, batch.options());
      starts.narrow(0, 1, N).copy_(at::bincount(batch, {}, N).cumsum(0));
      acc = at::empty(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
      const dim3 grid((H * W + kThreads - 1) / kThreads, (C + MLIC_GATHER_CH - 1) / MLIC_GATHER_CH, N);
      launch_block_sync(roi_pool_backward_gather_kernel<scalar_t, A>, grid, kThreads, stream,
          grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), rois.size(1), argmax.data_ptr<int>(),
          order.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), C, H, W, lv.data_ptr<int>(), nlev, a.S,
          static_cast<A>(a.spatial_scale), static_cast<A>(a.score_scale), static_cast<A>(a.score_bias),
          acc.data_ptr<A>());
    }
    result = acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
  });
  return result;
}

std::tuple<Tensor, Tensor> MLIC_BACKEND_FN(pool_forward)(const Tensor& x_, const PoolArgs& a) {
  MLIC_DEVICE_GUARD(x_.device());
  const Tensor x = x_.contiguous();
  const int64_t N = x.size(0);
  const int C = x.size(1), H = x.size(2), W = x.size(3);
  Tensor out = at::empty({N, C * a.S}, x.options());
  Tensor argmax = at::empty({a.mode == 0 ? N : 0, a.mode == 0 ? C * a.S : 0}, x.options().dtype(at::kInt));
  Tensor lp = to_device_ints(a.lp, x.device());
  auto stream = current_stream();
  MLIC_DISPATCH(x.scalar_type(), "mlic_pool_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    launch(pool_forward_kernel<scalar_t, A>, blocks_for(out.numel()), kThreads, stream,
        x.data_ptr<scalar_t>(), N, C, H, W, lp.data_ptr<int>(), static_cast<int>(a.lp.size() / MLIC_LP), a.S, a.mode,
        out.data_ptr<scalar_t>(), a.mode == 0 ? argmax.data_ptr<int>() : nullptr);
  });
  return {out, argmax};
}

Tensor MLIC_BACKEND_FN(pool_backward)(const Tensor& grad_, const Tensor& argmax_, const PoolArgs& a, at::IntArrayRef in_shape) {
  MLIC_DEVICE_GUARD(grad_.device());
  const Tensor grad = grad_.contiguous(), argmax = argmax_.contiguous();
  const int64_t N = in_shape[0];
  const int C = in_shape[1], H = in_shape[2], W = in_shape[3];
  Tensor gin = at::empty(in_shape, grad.options());
  Tensor lp = to_device_ints(a.lp, grad.device());
  auto stream = current_stream();
  MLIC_DISPATCH(grad.scalar_type(), "mlic_pool_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    launch(pool_backward_kernel<scalar_t, A>, blocks_for(gin.numel()), kThreads, stream,
        grad.data_ptr<scalar_t>(), a.mode == 0 ? argmax.data_ptr<int>() : nullptr, N, C, H, W, lp.data_ptr<int>(),
        static_cast<int>(a.lp.size() / MLIC_LP), a.S, a.mode, gin.data_ptr<scalar_t>());
  });
  return gin;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> MLIC_BACKEND_FN(two_stream_forward)(const Tensor& cls_, const Tensor& det_) {
  MLIC_DEVICE_GUARD(cls_.device());
  const Tensor cls = cls_.contiguous(), det = det_.contiguous();
  const int64_t N = cls.size(0);
  const int R = cls.size(1), C = cls.size(2);
  Tensor image = at::empty({N, C}, cls.options());
  Tensor region = at::empty_like(cls), pc = at::empty_like(cls), pd = at::empty_like(cls);
  if (N == 0) return {image, region, pc, pd};
  auto stream = current_stream();
  MLIC_DISPATCH(cls.scalar_type(), "mlic_two_stream_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor ws = at::empty({N, 2 * R + 2 * C}, cls.options().dtype(acc_dtype<scalar_t>()));
    launch_block_sync(two_stream_forward_kernel<scalar_t, A>, N, 512, stream,
        cls.data_ptr<scalar_t>(), det.data_ptr<scalar_t>(), R, C, ws.data_ptr<A>(), image.data_ptr<scalar_t>(),
        region.data_ptr<scalar_t>(), pc.data_ptr<scalar_t>(), pd.data_ptr<scalar_t>());
  });
  return {image, region, pc, pd};
}

std::tuple<Tensor, Tensor> MLIC_BACKEND_FN(two_stream_backward)(const Tensor& g_image_, const Tensor& g_region_, const Tensor& pc_,
                                                    const Tensor& pd_) {
  MLIC_DEVICE_GUARD(pc_.device());
  const Tensor pc = pc_.contiguous(), pd = pd_.contiguous();
  const Tensor gi = g_image_.defined() ? g_image_.contiguous() : g_image_;
  const Tensor gr = g_region_.defined() ? g_region_.contiguous() : g_region_;
  const int64_t N = pc.size(0);
  const int R = pc.size(1), C = pc.size(2);
  Tensor d_cls = at::empty_like(pc), d_det = at::empty_like(pc);
  if (N == 0) return {d_cls, d_det};
  auto stream = current_stream();
  MLIC_DISPATCH(pc.scalar_type(), "mlic_two_stream_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor ws = at::empty({N, R + C}, pc.options().dtype(acc_dtype<scalar_t>()));
    launch_block_sync(two_stream_backward_kernel<scalar_t, A>, N, 512, stream,
        gi.defined() ? gi.data_ptr<scalar_t>() : nullptr, gr.defined() ? gr.data_ptr<scalar_t>() : nullptr,
        pc.data_ptr<scalar_t>(), pd.data_ptr<scalar_t>(), R, C, ws.data_ptr<A>(), d_cls.data_ptr<scalar_t>(),
        d_det.data_ptr<scalar_t>());
  });
  return {d_cls, d_det};
}

#undef MLIC_DISPATCH

}  // namespace mlic
