// CPU back end: the per-element math comes from the shared device headers; only the
// loops (at::parallel_for over independent outputs, so results never depend on the
// thread count) are written here.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "../device/pool.cuh"
#include "../device/roi_pool.cuh"
#include "../frontend.h"

namespace mlic {

namespace {

// An argmax outside the plane never comes from the forward: refuse it (the registered
// backward ops are reachable through torch.ops.mlic) instead of writing out of bounds.
void check_argmax_seen(const std::atomic<bool>& bad, int64_t plane, const char* op) {
  TORCH_CHECK_VALUE(!bad.load(), op, ": `argmax` holds an index outside [-1, H*W = ", plane,
                    "); pass the argmax the forward returned");
}

}  // namespace

namespace cpu {

namespace {

// bin_max of channels [c0, c0 + G) of one bin of an N x H x W x C map, side by side, one
// pixel at a time in row-major order: each channel gets bin_max's result, while the compares
// of G contiguous channels run as vector operations.
template <int G, typename T, typename A>
void bin_max_channels(const T* img, int W, int C, int c0, int hs, int he, int ws, int we, A* val, int* idx) {
  A m[G];
  int mi[G];
  for (int k = 0; k < G; ++k) max_start(m[k], mi[k]);
  for (int h = hs; h < he; ++h)
    for (int w = ws; w < we; ++w) {
      const T* px = img + (static_cast<int64_t>(h) * W + w) * C + c0;
      const int pos = h * W + w;
      for (int k = 0; k < G; ++k) max_step<A, int>(static_cast<A>(px[k]), pos, m[k], mi[k]);
    }
  for (int k = 0; k < G; ++k) {
    val[k] = m[k];
    idx[k] = mi[k];
  }
}

#if defined(__GNUC__)
// float32: the same steps on 4-lane vectors (GCC/Clang vector extensions; the compiler
// does not find this form itself).
typedef float F4 __attribute__((vector_size(16)));
typedef int I4 __attribute__((vector_size(16)));

template <>
void bin_max_channels<16, float, float>(const float* img, int W, int C, int c0, int hs, int he, int ws, int we,
                                        float* val, int* idx) {
  constexpr int V = 4;
  F4 m[V];
  I4 mi[V];
  for (int k = 0; k < V; ++k) {
    float m0;
    int mi0;
    max_start(m0, mi0);
    m[k] = F4{} + m0;
    mi[k] = I4{} + mi0;
  }
  for (int h = hs; h < he; ++h)
    for (int w = ws; w < we; ++w) {
      const float* px = img + (static_cast<int64_t>(h) * W + w) * C + c0;
      const I4 pos = I4{} + (h * W + w);
      for (int k = 0; k < V; ++k) {
        F4 v;
        std::memcpy(&v, px + 4 * k, sizeof v);
        max_step<F4, I4>(v, pos, m[k], mi[k]);
      }
    }
  std::memcpy(val, m, sizeof m);
  std::memcpy(idx, mi, sizeof mi);
}
#endif

// roi_forward on an N x H x W x C (channels_last) map, with the same results.
void roi_forward_nhwc(const Tensor& feat, const Tensor& rois, const RoiArgs& a, Tensor& out, Tensor& argmax) {
  constexpr int kBlock = 16;
  const int64_t K = rois.size(0);
  const int N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const RoiLevels& lv = a.levels;
  const int cols = rois.size(1);
  MLIC_DISPATCH(feat.scalar_type(), "mlic_roi_forward_cpu_nhwc", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* f = feat.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int* am = argmax.data_ptr<int>();
    const A ss = a.spatial_scale, sc = a.score_scale, sb = a.score_bias;
    at::parallel_for(0, K, 8, [&](int64_t k0, int64_t k1) {
      std::vector<A> m(C);
      std::vector<int> mi(C);
      for (int64_t k = k0; k < k1; ++k) {
        const RoiBox<A> box = roi_box<scalar_t, A>(r + k * cols, cols, N, ss, sc, sb);
        const int64_t row = k * C * lv.cells;
        const scalar_t* img = f + static_cast<int64_t>(box.b < 0 ? 0 : box.b) * H * W * C;
        for (int l = 0; l < lv.count; ++l) {
          const int hl = lv.level[l].h, wl = lv.level[l].w, off = lv.level[l].offset;
          for (int ph = 0; ph < hl; ++ph) {
            int hs, he;
            roi_bin<A>(ph, hl, box.h, box.y1, H, hs, he);
            for (int pw = 0; pw < wl; ++pw) {
              int ws, we;
              roi_bin<A>(pw, wl, box.w, box.x1, W, ws, we);
              if (box.b < 0) he = hs;  // not an image of this batch: an empty bin, as roi_forward
              const bool empty = roi_bin_empty(hs, he, ws, we);
              int c0 = 0;
              for (; c0 + kBlock <= C; c0 += kBlock)
                bin_max_channels<kBlock>(img, W, C, c0, hs, he, ws, we, m.data() + c0, mi.data() + c0);
              for (; c0 < C; ++c0) bin_max_channels<1>(img, W, C, c0, hs, he, ws, we, m.data() + c0, mi.data() + c0);
              const int64_t base = row + static_cast<int64_t>(C) * off + ph * wl + pw;
              for (int c = 0; c < C; ++c) {
                const int64_t i = base + static_cast<int64_t>(c) * hl * wl;
                const A val = empty ? static_cast<A>(0) : m[c];  // bin_max's empty bin: 0, index -1
                o[i] = static_cast<scalar_t>(val * box.factor);
                am[i] = empty ? -1 : mi[c];
              }
            }
          }
        }
      }
    });
  });
}

}  // namespace

std::tuple<Tensor, Tensor> roi_forward(const Tensor& feat_, const Tensor& rois_, const RoiArgs& a) {
  const bool nhwc = feat_.is_contiguous(at::MemoryFormat::ChannelsLast) && !feat_.is_contiguous();
  const Tensor feat = nhwc ? feat_ : feat_.contiguous(), rois = rois_.contiguous();
  const int64_t K = rois.size(0);
  const int N = feat.size(0), C = feat.size(1), H = feat.size(2), W = feat.size(3);
  const RoiLevels& lv = a.levels;
  Tensor out = at::empty({K, int64_t(C) * lv.cells}, feat.options());
  Tensor argmax = at::empty({K, int64_t(C) * lv.cells}, feat.options().dtype(at::kInt));
  if (K == 0) return {out, argmax};
  if (nhwc) {
    roi_forward_nhwc(feat, rois, a, out, argmax);
    return {out, argmax};
  }
  const int cols = rois.size(1);
  MLIC_DISPATCH(feat.scalar_type(), "mlic_roi_forward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* f = feat.data_ptr<scalar_t>();
    const scalar_t* r = rois.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int* am = argmax.data_ptr<int>();
    const A ss = a.spatial_scale, sc = a.score_scale, sb = a.score_bias;
    at::parallel_for(0, K, 8, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) {
        const RoiBox<A> box = roi_box<scalar_t, A>(r + k * cols, cols, N, ss, sc, sb);
        const int64_t row = k * C * lv.cells;
        for (int l = 0; l < lv.count; ++l) {
          const int hl = lv.level[l].h, wl = lv.level[l].w, off = lv.level[l].offset;
          for (int ph = 0; ph < hl; ++ph) {
            int hs, he;
            roi_bin<A>(ph, hl, box.h, box.y1, H, hs, he);
            for (int pw = 0; pw < wl; ++pw) {
              int ws, we;
              roi_bin<A>(pw, wl, box.w, box.x1, W, ws, we);
              if (box.b < 0) he = hs;  // not an image of this batch: an empty bin (checked before on the CPU)
              for (int c = 0; c < C; ++c) {
                A val;
                int idx;
                bin_max<scalar_t, A>(f + (static_cast<int64_t>(box.b < 0 ? 0 : box.b) * C + c) * H * W, W, hs, he,
                                     ws, we, val, idx);
                const int64_t i = row + static_cast<int64_t>(C) * off + c * hl * wl + ph * wl + pw;
                o[i] = static_cast<scalar_t>(val * box.factor);
                am[i] = idx;
              }
            }
          }
        }
      }
    });
  });
  return {out, argmax};
}

// Parallel over channels: each thread owns whole planes, and within a plane the
// contributions are summed in RoI, level, cell order (deterministic).
Tensor roi_backward(const Tensor& grad_, const Tensor& rois_, const Tensor& argmax_, const RoiArgs& a,
                    at::IntArrayRef in_shape, bool /*deterministic: always*/) {
  const Tensor grad = grad_.contiguous(), rois = rois_.contiguous(), argmax = argmax_.contiguous();
  const int64_t K = rois.size(0);
  const int N = in_shape[0], C = in_shape[1], H = in_shape[2], W = in_shape[3];
  const RoiLevels& lv = a.levels;
  std::atomic<bool> bad_argmax{false};
  Tensor result;
  MLIC_DISPATCH(grad.scalar_type(), "mlic_roi_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    Tensor acc = at::zeros(in_shape, grad.options().dtype(acc_dtype<scalar_t>()));
    if (K > 0) {
      const scalar_t* g = grad.data_ptr<scalar_t>();
      const scalar_t* r = rois.data_ptr<scalar_t>();
      const int* am = argmax.data_ptr<int>();
      A* gi = acc.data_ptr<A>();
      const int cols = rois.size(1);
      const A sc = a.score_scale, sb = a.score_bias;
      at::parallel_for(0, C, 1, [&](int64_t c0, int64_t c1) {
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t k = 0; k < K; ++k) {
            const scalar_t* roi = r + k * cols;
            const int b = roi_batch(static_cast<A>(roi[0]), N);
            if (b < 0) continue;  // gave an empty RoI in the forward
            const A factor = roi_factor<scalar_t, A>(roi, cols, sc, sb);
            A* plane = gi + (static_cast<int64_t>(b) * C + c) * H * W;
            for (int l = 0; l < lv.count; ++l) {
              const int cells = lv.level[l].h * lv.level[l].w;
              const int64_t base = k * C * lv.cells + static_cast<int64_t>(C) * lv.level[l].offset + c * cells;
              for (int q = 0; q < cells; ++q) {
                const int idx = am[base + q];
                if (idx < 0) continue;
                if (idx >= H * W) {
                  bad_argmax = true;
                  continue;
                }
                plane[idx] += static_cast<A>(g[base + q]) * factor;
              }
            }
          }
      });
    }
    result = acc.scalar_type() == grad.scalar_type() ? acc : acc.to(grad.scalar_type());
  });
  check_argmax_seen(bad_argmax, int64_t(H) * W, "mlic.roi_spp_backward");
  return result;
}

namespace {

// kGroup planes of one level at a time (pool_cell_planes: the same bits as one plane
// alone), so that their independent chains of adds or compares overlap.
constexpr int kGroup = 4;

template <typename T, typename A>
void pool_level_group(const T* const* planes, int H, int W, const PoolLevel& lp, int mode, T* const* outs,
                      int* const* ams) {
  for (int oy = 0; oy < lp.oh; ++oy)
    for (int ox = 0; ox < lp.ow; ++ox) {
      A val[kGroup];
      int idx[kGroup];
      pool_cell_planes<kGroup, T, A>(planes, H, W, lp, oy, ox, mode, val, idx);
      const int cell = oy * lp.ow + ox;
      for (int k = 0; k < kGroup; ++k) {
        outs[k][cell] = static_cast<T>(val[k]);
        if (mode == MLIC_POOL_MAX) ams[k][cell] = idx[k];
      }
    }
}

}  // namespace

std::tuple<Tensor, Tensor> pool_forward(const Tensor& x_, const PoolArgs& a) {
  const Tensor x = x_.contiguous();
  const int64_t N = x.size(0);
  const int C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolLevels& lv = a.levels;
  const bool is_max = lv.mode == MLIC_POOL_MAX;
  Tensor out = at::empty({N, int64_t(C) * lv.cells}, x.options());
  Tensor argmax = at::empty({is_max ? N : 0, is_max ? int64_t(C) * lv.cells : 0}, x.options().dtype(at::kInt));
  MLIC_DISPATCH(x.scalar_type(), "mlic_pool_forward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* xp = x.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int* am = is_max ? argmax.data_ptr<int>() : nullptr;
    // Offset of plane p's cells of a level in `out` (and `argmax`).
    auto cells_at = [&](int64_t p, const PoolLevel& lp) {
      const int64_t n = p / C;
      const int c = static_cast<int>(p - n * C);
      return n * C * lv.cells + static_cast<int64_t>(C) * lp.offset + static_cast<int64_t>(c) * lp.oh * lp.ow;
    };
    at::parallel_for(0, N * C, kGroup, [&](int64_t p0, int64_t p1) {
      int dummy[1];
      int64_t p = p0;
      for (; p + kGroup <= p1; p += kGroup) {
        const scalar_t* planes[kGroup];
        for (int k = 0; k < kGroup; ++k) planes[k] = xp + (p + k) * H * W;
        for (int l = 0; l < lv.count; ++l) {
          const PoolLevel& lp = lv.level[l];
          scalar_t* outs[kGroup];
          int* ams[kGroup];
          for (int k = 0; k < kGroup; ++k) {
            const int64_t off = cells_at(p + k, lp);
            outs[k] = o + off;
            ams[k] = am ? am + off : dummy;
          }
          pool_level_group<scalar_t, A>(planes, H, W, lp, lv.mode, outs, ams);
        }
      }
      for (; p < p1; ++p) {  // the last planes of the chunk, one at a time
        const scalar_t* plane = xp + p * H * W;
        for (int l = 0; l < lv.count; ++l) {
          const PoolLevel& lp = lv.level[l];
          const int64_t base = cells_at(p, lp);
          for (int oy = 0; oy < lp.oh; ++oy)
            for (int ox = 0; ox < lp.ow; ++ox) {
              A val;
              int idx;
              pool_cell<scalar_t, A>(plane, H, W, lp, oy, ox, lv.mode, val, idx);
              o[base + oy * lp.ow + ox] = static_cast<scalar_t>(val);
              if (am) am[base + oy * lp.ow + ox] = idx;
            }
        }
      }
    });
  });
  return {out, argmax};
}

// Scatter per plane (each thread owns whole planes): every pixel receives its terms in
// level order and row-major cell order, the order of the GPU's gather (pool_pixel_grad).
Tensor pool_backward(const Tensor& grad_, const Tensor& argmax_, const PoolArgs& a, at::IntArrayRef in_shape) {
  const Tensor grad = grad_.contiguous(), argmax = argmax_.contiguous();
  const int C = in_shape[1], H = in_shape[2], W = in_shape[3];
  const PoolLevels& lv = a.levels;
  Tensor gin = at::empty(in_shape, grad.options());
  const int64_t row = static_cast<int64_t>(C) * lv.cells;
  std::atomic<bool> bad_argmax{false};
  MLIC_DISPATCH(grad.scalar_type(), "mlic_pool_backward_cpu", [&] {
    using A = typename Acc<scalar_t>::type;
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const int* am = lv.mode == MLIC_POOL_MAX ? argmax.data_ptr<int>() : nullptr;
    scalar_t* o = gin.data_ptr<scalar_t>();
    at::parallel_for(0, gin.size(0) * C, 4, [&](int64_t p0, int64_t p1) {
      std::vector<A> buf(static_cast<size_t>(H) * W);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t n = p / C;
        const int c = p - n * C;
        std::fill(buf.begin(), buf.end(), static_cast<A>(0));
        A* __restrict__ b = buf.data();
        for (int l = 0; l < lv.count; ++l) {
          const PoolLevel& lp = lv.level[l];
          const int64_t base = n * row + static_cast<int64_t>(C) * lp.offset + static_cast<int64_t>(c) * lp.oh * lp.ow;
          if (lv.mode == MLIC_POOL_MAX) {
            for (int q = 0; q < lp.oh * lp.ow; ++q) {
              const int idx = am[base + q];
              if (idx < 0) continue;
              if (idx >= H * W) {
                bad_argmax = true;
                continue;
              }
              b[idx] += static_cast<A>(g[base + q]);
            }
            continue;
          }
          for (int oy = 0; oy < lp.oh; ++oy)
            for (int ox = 0; ox < lp.ow; ++ox) {
              int hs, he, ws, we;
              const int pool_size = pool_window(H, W, lp, oy, ox, hs, he, ws, we);
              const A v = static_cast<A>(g[base + oy * lp.ow + ox]) / static_cast<A>(pool_size);
              for (int y = hs; y < he; ++y) {
                A* __restrict__ r = b + static_cast<int64_t>(y) * W;
                for (int x = ws; x < we; ++x) r[x] += v;
              }
            }
        }
        scalar_t* out = o + p * H * W;
        for (int64_t q = 0; q < static_cast<int64_t>(H) * W; ++q) out[q] = static_cast<scalar_t>(buf[q]);
      }
    });
  });
  check_argmax_seen(bad_argmax, int64_t(H) * W, "mlic.spp_backward / mlic.caffe_pool2d_backward");
  return gin;
}

// The two-stream head on the CPU: the ATen composite (softmax over classes, softmax over
// regions, their product, its sum over regions), in float32 for float16/bfloat16. ATen's
// softmax takes the maximum, exp of the difference and the sum as Caffe does, then
// scales by the reciprocal of the sum. The head costs under 0.1% of a training step: no
// CPU kernel of its own.
std::tuple<Tensor, Tensor, Tensor, Tensor> two_stream_forward(const Tensor& cls, const Tensor& det) {
  const auto acc = cls.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor pc = at::softmax(cls, 2, acc), pd = at::softmax(det, 1, acc);
  const Tensor region = pc * pd;
  const Tensor image = region.sum(1);
  const auto t = cls.scalar_type();
  return {image.to(t), region.to(t), pc.to(t), pd.to(t)};
}

// With G the upstream gradient of region (plus that of image, broadcast over regions):
// d cls = pc*(G*pd - sum over classes of G*pd*pc), d det = pd*(G*pc - sum over regions of G*pc*pd).
std::tuple<Tensor, Tensor> two_stream_backward(const Tensor& g_image, const Tensor& g_region, const Tensor& pc_,
                                               const Tensor& pd_) {
  const auto acc = pc_.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const Tensor pc = pc_.to(acc), pd = pd_.to(acc);
  Tensor g = g_region.defined() ? g_region.to(acc) : Tensor();
  if (g_image.defined()) {
    const Tensor gi = g_image.to(acc).unsqueeze(1);
    g = g.defined() ? g + gi : gi.expand_as(pc);
  }
  // region = pc * pd: the softmaxes' upstream gradients, then softmax's own backward.
  const Tensor d_cls = at::_softmax_backward_data(g * pd, pc, 2, acc);
  const Tensor d_det = at::_softmax_backward_data(g * pc, pd, 1, acc);
  return {d_cls.to(pc_.scalar_type()), d_det.to(pc_.scalar_type())};
}

}  // namespace cpu

MLIC_BACKEND_STRUCT(CpuBackend, cpu, true)

}  // namespace mlic

TORCH_LIBRARY_IMPL(mlic, CPU, m) { mlic::OpKernels<mlic::CpuBackend>::register_kernels(m); }
