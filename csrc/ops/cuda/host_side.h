// Host side of the CUDA back end, written once and included inside a namespace by each
// way to run its kernels: nvcc's compiled kernels (cuda/ops_cuda.cu, namespace
// mlic::cuda), their emulation on the host (emulation/ops_emulated.cpp, mlic::emulated)
// and NVRTC (nvrtc/ops_nvrtc.cpp, mlic::nvrtc). So the launch geometry, the allocation
// and the kernels' arguments are the same on every path, and the emulation tests them
// without a GPU. The includer provides, in its namespace: Stream current_stream(device),
// launch(kernel_ref, grid, block, stream, args...) and launch_block_sync(...) (the latter
// for kernels that call __syncthreads), and MLIC_DEVICE_GUARD(device). No RoI value is
// read on the host and nothing here waits for the device.
//
// (No include guard: included once per back end namespace.)

std::tuple<Tensor, Tensor> roi_forward(const Tensor& feat_, const Tensor& rois_, const RoiArgs& a) {
  MLIC_DEVICE_GUARD(feat_.device());
  const Tensor feat = feat_.contiguous(), rois = rois_.contiguous();
  const int64_t K = rois.size(0);
  const int N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  Tensor out = at::empty({K, int64_t(C) * a.levels.cells}, feat.options());
  Tensor argmax = at::empty({K, int64_t(C) * a.levels.cells}, feat.options().dtype(at::kInt));
  if (K == 0) return {out, argmax};
  auto stream = current_stream(feat.device());
  MLIC_DISPATCH(feat.scalar_type(), "mlic_roi_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    launch(MLIC_KERNEL(roi_pool_forward_kernel, scalar_t, A), blocks_for(out.numel()), kThreads, stream,
           feat.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), rois.size(1), K, N, C, H, W, a.levels,
           static_cast<A>(a.spatial_scale), static_cast<A>(a.score_scale), static_cast<A>(a.score_bias),
           out.data_ptr<scalar_t>(), argmax.data_ptr<int>());
  });
  return {out, argmax};
}

Tensor roi_backward(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, const RoiArgs& a,
                    at::IntArrayRef in_shape, bool deterministic) {
  MLIC_DEVICE_GUARD(grad_.device());
  const Tensor grad = grad_.contiguous(), rois = rois_.contiguous(), argmax = argmax_.contiguous();
  const int64_t K = rois.size(0);
  const int N = in_shape[0], C = in_shape[1], H = in_shape[2], W = in_shape[3];
  auto stream = current_stream(grad.device());
  Tensor result;
  MLIC_DISPATCH(grad.scalar_type(), "mlic_roi_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor acc;
    if (K == 0) {
      acc = at::zeros(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
    } else if (!deterministic) {
      acc = at::zeros(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
      launch(MLIC_KERNEL(roi_pool_backward_atomic_kernel, scalar_t, A), blocks_for(grad.numel()), kThreads, stream,
             grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), rois.size(1), argmax.data_ptr<int>(), K, N, C, H,
             W, a.levels, static_cast<A>(a.score_scale), static_cast<A>(a.score_bias), acc.data_ptr<A>());
    } else {
      TORCH_CHECK_VALUE(N <= kMaxGridYZ && (C + MLIC_GATHER_CH - 1) / MLIC_GATHER_CH <= kMaxGridYZ,
                        "mlic.roi_spp_backward: the deterministic backward handles at most ", kMaxGridYZ,
                        " images and ", kMaxGridYZ * MLIC_GATHER_CH, " channels, got ", N, " and ", C);
      // RoIs grouped by image, keeping their order inside an image, without reading them on
      // the host: a RoI outside [0, N) goes to bucket N, which no block reads.
      const Tensor b = rois.select(1, 0).to(at::kDouble).trunc();
      const Tensor valid = b.gt(-1).logical_and(b.lt(N));
      const Tensor batch = at::where(valid, b, static_cast<double>(N)).to(at::kLong);
      const auto sorted = batch.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false);
      const Tensor order = std::get<1>(sorted).contiguous();
      const Tensor starts = at::searchsorted(std::get<0>(sorted), at::arange(N + 1, batch.options())).contiguous();
      acc = at::empty(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
      const dim3 grid((H * W + kThreads - 1) / kThreads, (C + MLIC_GATHER_CH - 1) / MLIC_GATHER_CH, N);
      launch_block_sync(MLIC_KERNEL(roi_pool_backward_gather_kernel, scalar_t, A), grid, kThreads, stream,
                        grad.data_ptr<scalar_t>(), rois.data_ptr<scalar_t>(), rois.size(1), argmax.data_ptr<int>(),
                        order.data_ptr<int64_t>(), starts.data_ptr<int64_t>(), N, C, H, W, a.levels,
                        static_cast<A>(a.spatial_scale), static_cast<A>(a.score_scale), static_cast<A>(a.score_bias),
                        acc.data_ptr<A>());
    }
    result = acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
  });
  return result;
}

std::tuple<Tensor, Tensor> pool_forward(const Tensor& x_, const PoolArgs& a) {
  MLIC_DEVICE_GUARD(x_.device());
  const Tensor x = x_.contiguous();
  const int64_t N = x.size(0);
  const int C = x.size(1), H = x.size(2), W = x.size(3);
  const bool is_max = a.levels.mode == MLIC_POOL_MAX;
  Tensor out = at::empty({N, int64_t(C) * a.levels.cells}, x.options());
  Tensor argmax = at::empty({is_max ? N : 0, is_max ? int64_t(C) * a.levels.cells : 0}, x.options().dtype(at::kInt));
  auto stream = current_stream(x.device());
  MLIC_DISPATCH(x.scalar_type(), "mlic_pool_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    launch(MLIC_KERNEL(pool_forward_kernel, scalar_t, A), blocks_for(out.numel()), kThreads, stream,
           x.data_ptr<scalar_t>(), N, C, H, W, a.levels, out.data_ptr<scalar_t>(),
           is_max ? argmax.data_ptr<int>() : nullptr);
  });
  return {out, argmax};
}

Tensor pool_backward(const Tensor& grad_, const Tensor& argmax_, const PoolArgs& a, at::IntArrayRef in_shape) {
  MLIC_DEVICE_GUARD(grad_.device());
  const Tensor grad = grad_.contiguous(), argmax = argmax_.contiguous();
  const int64_t N = in_shape[0];
  const int C = in_shape[1], H = in_shape[2], W = in_shape[3];
  const bool is_max = a.levels.mode == MLIC_POOL_MAX;
  Tensor gin = at::empty(in_shape, grad.options());
  auto stream = current_stream(grad.device());
  MLIC_DISPATCH(grad.scalar_type(), "mlic_pool_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    launch(MLIC_KERNEL(pool_backward_kernel, scalar_t, A), blocks_for(gin.numel()), kThreads, stream,
           grad.data_ptr<scalar_t>(), is_max ? argmax.data_ptr<int>() : nullptr, N, C, H, W, a.levels,
           gin.data_ptr<scalar_t>());
  });
  return gin;
}

std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward(const Tensor& cls_, const Tensor& det_) {
  MLIC_DEVICE_GUARD(cls_.device());
  const Tensor cls = cls_.contiguous(), det = det_.contiguous();
  const int64_t N = cls.size(0);
  const int R = cls.size(1), C = cls.size(2);
  Tensor image = at::empty({N, C}, cls.options());
  Tensor region = at::empty_like(cls), pc = at::empty_like(cls), pd = at::empty_like(cls);
  if (N == 0) return {image, region, pc, pd};
  auto stream = current_stream(cls.device());
  MLIC_DISPATCH(cls.scalar_type(), "mlic_two_stream_forward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor ws = at::empty({N, 2 * R + 2 * C}, cls.options().dtype(acc_dtype<scalar_t>()));
    launch_block_sync(MLIC_KERNEL(two_stream_forward_kernel, scalar_t, A), N, kTwoStreamThreads, stream,
                      cls.data_ptr<scalar_t>(), det.data_ptr<scalar_t>(), R, C, ws.data_ptr<A>(),
                      image.data_ptr<scalar_t>(), region.data_ptr<scalar_t>(), pc.data_ptr<scalar_t>(),
                      pd.data_ptr<scalar_t>());
  });
  return {image, region, pc, pd};
}

std::tuple<Tensor, Tensor> two_stream_backward(const Tensor& g_image_, const Tensor& g_region_, const Tensor& pc_,
                                               const Tensor& pd_) {
  MLIC_DEVICE_GUARD(pc_.device());
  const Tensor pc = pc_.contiguous(), pd = pd_.contiguous();
  const Tensor gi = g_image_.defined() ? g_image_.contiguous() : g_image_;
  const Tensor gr = g_region_.defined() ? g_region_.contiguous() : g_region_;
  const int64_t N = pc.size(0);
  const int R = pc.size(1), C = pc.size(2);
  Tensor d_cls = at::empty_like(pc), d_det = at::empty_like(pc);
  if (N == 0) return {d_cls, d_det};
  auto stream = current_stream(pc.device());
  MLIC_DISPATCH(pc.scalar_type(), "mlic_two_stream_backward_cuda", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor ws = at::empty({N, R + C}, pc.options().dtype(acc_dtype<scalar_t>()));
    const scalar_t* gip = gi.defined() ? gi.data_ptr<scalar_t>() : nullptr;
    const scalar_t* grp = gr.defined() ? gr.data_ptr<scalar_t>() : nullptr;
    launch_block_sync(MLIC_KERNEL(two_stream_backward_kernel, scalar_t, A), N, kTwoStreamThreads, stream, gip, grp,
                      pc.data_ptr<scalar_t>(), pd.data_ptr<scalar_t>(), R, C, ws.data_ptr<A>(),
                      d_cls.data_ptr<scalar_t>(), d_det.data_ptr<scalar_t>());
  });
  return {d_cls, d_det};
}
