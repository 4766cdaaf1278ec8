// RoI max pooling as the authors' Caffe ROIPooling layer, generalised to several
// grids ("levels") per RoI whose outputs are concatenated per RoI (roi_spp).
//
// Output of one RoI: for each level l, a [C, h_l, w_l] block, blocks back to back
// (RoiLevels); roi_pool is the single-level case, laid out as [K, C, ph, pw].
//
// Any RoI values are safe here (the CPU back end validates them; the CUDA back ends do
// not read them on the host): a batch index outside [0, N) gives an empty RoI (output 0,
// argmax -1), coordinates are clamped to +-2^29 (NaN to -2^29) before rounding to int.
#pragma once
#include "common.cuh"

namespace mlic {

template <typename A>
MLIC_HD int roi_coord(A v) {
  const A lim = static_cast<A>(MLIC_ROI_COORD_LIMIT);
  const A c = v > -lim ? (v < lim ? v : lim) : -lim;  // NaN fails `v > -lim`
  return static_cast<int>(c_round(c));
}

// Image index of a RoI (C's truncation), or -1 outside [0, N) or for NaN.
template <typename A>
MLIC_HD int roi_batch(A v, int N) {
  return (v > static_cast<A>(-1) && v < static_cast<A>(N)) ? static_cast<int>(v) : -1;
}

// The factor a RoI's output is scaled by: score_scale * score + score_bias, the score
// being column 5 of a [K, 6] row and 1 for a [K, 5] one.
template <typename T, typename A>
MLIC_HD A roi_factor(const T* roi, int roi_cols, A score_scale, A score_bias) {
  const A score = roi_cols >= 6 ? static_cast<A>(roi[5]) : static_cast<A>(1);
  return score_scale * score + score_bias;
}

template <typename A>
struct RoiBox {
  int b;        // image index, -1 when outside [0, N)
  int x1, y1;   // rounded start in feature coordinates
  int w, h;     // extent, at least 1
  A factor;     // score_scale * score + score_bias
};

template <typename T, typename A>
MLIC_HD RoiBox<A> roi_box(const T* roi, int roi_cols, int N, A spatial_scale, A score_scale, A score_bias) {
  RoiBox<A> r;
  r.b = roi_batch(static_cast<A>(roi[0]), N);
  r.x1 = roi_coord(static_cast<A>(roi[1]) * spatial_scale);
  r.y1 = roi_coord(static_cast<A>(roi[2]) * spatial_scale);
  const int x2 = roi_coord(static_cast<A>(roi[3]) * spatial_scale);
  const int y2 = roi_coord(static_cast<A>(roi[4]) * spatial_scale);
  r.w = imax(x2 - r.x1 + 1, 1);
  r.h = imax(y2 - r.y1 + 1, 1);
  r.factor = roi_factor<T, A>(roi, roi_cols, score_scale, score_bias);
  return r;
}

// Size of one of `pooled` bins over a RoI extent `len`, in the accumulation type.
template <typename A>
MLIC_HD A roi_bin_size(int len, int pooled) {
  return static_cast<A>(len) / static_cast<A>(pooled);
}

// Bin p of `pooled` along one axis of extent `len` starting at `start`, clipped to [0, limit].
template <typename A>
MLIC_HD void roi_bin(int p, int pooled, int len, int start, int limit, int& lo, int& hi) {
  const A bin = roi_bin_size<A>(len, pooled);
  lo = static_cast<int>(c_floor(static_cast<A>(p) * bin));
  hi = static_cast<int>(c_ceil(static_cast<A>(p + 1) * bin));
  lo = imin(imax(lo + start, 0), limit);
  hi = imin(imax(hi + start, 0), limit);
}

MLIC_HD bool roi_bin_empty(int hs, int he, int ws, int we) { return he <= hs || we <= ws; }

// ROIPooling's bin: an empty bin gives 0 and index -1, otherwise the window maximum.
template <typename T, typename A>
MLIC_HD void bin_max(const T* plane, int W, int hs, int he, int ws, int we, A& val, int& idx) {
  if (roi_bin_empty(hs, he, ws, we)) {
    val = static_cast<A>(0);
    idx = -1;
    return;
  }
  window_max<T, A>(plane, W, hs, he, ws, we, val, idx);
}

// Decodes j in [0, C*S) of one RoI's row into (level, channel, ph, pw).
MLIC_HD void roi_row_decode(int j, int C, const RoiLevels& lv, int& l, int& c, int& ph, int& pw) {
  l = level_of(lv, C, j);
  const int hl = lv.level[l].h, wl = lv.level[l].w;
  c = j / (hl * wl);
  const int cell = j - c * hl * wl;
  ph = cell / wl;
  pw = cell - ph * wl;
}

#ifdef MLIC_DEVICE_CODE

template <typename T, typename A>
__global__ void roi_pool_forward_kernel(const T* __restrict__ feat, const T* __restrict__ rois, int roi_cols,
                                        mlic_int64 K, int N, int C, int H, int W, RoiLevels lv, A spatial_scale,
                                        A score_scale, A score_bias, T* __restrict__ out,
                                        int* __restrict__ argmax) {
  const mlic_int64 row = static_cast<mlic_int64>(C) * lv.cells;
  const mlic_int64 total = K * row;
  for (mlic_int64 i = blockIdx.x * static_cast<mlic_int64>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<mlic_int64>(gridDim.x) * blockDim.x) {
    const mlic_int64 k = i / row;
    int l, c, ph, pw;
    roi_row_decode(static_cast<int>(i - k * row), C, lv, l, c, ph, pw);
    const RoiBox<A> r = roi_box<T, A>(rois + k * roi_cols, roi_cols, N, spatial_scale, score_scale, score_bias);
    A val = static_cast<A>(0);
    int idx = -1;
    if (r.b >= 0) {
      int hs, he, ws, we;
      roi_bin<A>(ph, lv.level[l].h, r.h, r.y1, H, hs, he);
      roi_bin<A>(pw, lv.level[l].w, r.w, r.x1, W, ws, we);
      bin_max<T, A>(feat + (static_cast<mlic_int64>(r.b) * C + c) * H * W, W, hs, he, ws, we, val, idx);
    }
    out[i] = static_cast<T>(val * r.factor);
    argmax[i] = idx;
  }
}

// Fast backward: one thread per output cell, atomics into an accumulator of type A. An
// argmax outside the plane (never produced by the forward) is skipped, not written.
template <typename T, typename A>
__global__ void roi_pool_backward_atomic_kernel(const T* __restrict__ grad, const T* __restrict__ rois, int roi_cols,
                                                const int* __restrict__ argmax, mlic_int64 K, int N, int C, int H,
                                                int W, RoiLevels lv, A score_scale, A score_bias,
                                                A* __restrict__ grad_in) {
  const mlic_int64 row = static_cast<mlic_int64>(C) * lv.cells;
  const mlic_int64 total = K * row;
  for (mlic_int64 i = blockIdx.x * static_cast<mlic_int64>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<mlic_int64>(gridDim.x) * blockDim.x) {
    const int idx = argmax[i];
    if (idx < 0 || idx >= H * W) continue;
    const mlic_int64 k = i / row;
    const T* roi = rois + k * roi_cols;
    const int b = roi_batch(static_cast<A>(roi[0]), N);
    if (b < 0) continue;
    int l, c, ph, pw;
    roi_row_decode(static_cast<int>(i - k * row), C, lv, l, c, ph, pw);
    const A factor = roi_factor<T, A>(roi, roi_cols, score_scale, score_bias);
    MLIC_ATOMIC_ADD(grad_in + (static_cast<mlic_int64>(b) * C + c) * H * W + idx, static_cast<A>(grad[i]) * factor);
  }
}

#define MLIC_GATHER_CH 8
#define MLIC_GATHER_TILE 64

// Deterministic backward: each thread owns one input pixel for up to MLIC_GATHER_CH
// channels of one image and sums, in RoI order then level then row-major cell order
// (the CPU kernel's order), every cell whose argmax is that pixel.
// `order` lists RoI indices grouped by image (stable), image b at [starts[b], starts[b+1]).
template <typename T, typename A>
__global__ void roi_pool_backward_gather_kernel(const T* __restrict__ grad, const T* __restrict__ rois, int roi_cols,
                                                const int* __restrict__ argmax, const mlic_int64* __restrict__ order,
                                                const mlic_int64* __restrict__ starts, int N, int C, int H, int W,
                                                RoiLevels lv, A spatial_scale, A score_scale, A score_bias,
                                                A* __restrict__ grad_in) {
  __shared__ int s_geo[MLIC_GATHER_TILE][4];
  __shared__ A s_factor[MLIC_GATHER_TILE];
  __shared__ mlic_int64 s_k[MLIC_GATHER_TILE];
  const int b = blockIdx.z;
  const int c0 = blockIdx.y * MLIC_GATHER_CH;
  const int pix = blockIdx.x * blockDim.x + threadIdx.x;
  const bool active = pix < H * W;
  const int h = active ? pix / W : 0;
  const int w = active ? pix - h * W : 0;
  const mlic_int64 row = static_cast<mlic_int64>(C) * lv.cells;
  A acc[MLIC_GATHER_CH];
  for (int q = 0; q < MLIC_GATHER_CH; ++q) acc[q] = static_cast<A>(0);
  const mlic_int64 begin = starts[b], end = starts[b + 1];
  for (mlic_int64 t0 = begin; t0 < end; t0 += MLIC_GATHER_TILE) {
    __syncthreads();
    for (int t = threadIdx.x; t < MLIC_GATHER_TILE && t0 + t < end; t += blockDim.x) {
      const mlic_int64 k = order[t0 + t];
      const RoiBox<A> r = roi_box<T, A>(rois + k * roi_cols, roi_cols, N, spatial_scale, score_scale, score_bias);
      s_geo[t][0] = r.x1;
      s_geo[t][1] = r.y1;
      s_geo[t][2] = r.w;
      s_geo[t][3] = r.h;
      s_factor[t] = r.factor;
      s_k[t] = k;
    }
    __syncthreads();
    if (!active) continue;
    const int n = (end - t0) < MLIC_GATHER_TILE ? static_cast<int>(end - t0) : MLIC_GATHER_TILE;
    for (int t = 0; t < n; ++t) {
      const int x1 = s_geo[t][0], y1 = s_geo[t][1], rw = s_geo[t][2], rh = s_geo[t][3];
      // The bins cover at most [start, start+len]: a cheap reject before the exact test.
      if (h < y1 || h > y1 + rh || w < x1 || w > x1 + rw) continue;
      const mlic_int64 base = s_k[t] * row;
      for (int l = 0; l < lv.count; ++l) {
        const int hl = lv.level[l].h, wl = lv.level[l].w, off = lv.level[l].offset;
        const A bh = roi_bin_size<A>(rh, hl);
        const A bw = roi_bin_size<A>(rw, wl);
        const int ph0 = imax(static_cast<int>(c_floor(static_cast<A>(h - y1) / bh)) - 1, 0);
        const int ph1 = imin(static_cast<int>(c_ceil(static_cast<A>(h - y1 + 1) / bh)), hl - 1);
        const int pw0 = imax(static_cast<int>(c_floor(static_cast<A>(w - x1) / bw)) - 1, 0);
        const int pw1 = imin(static_cast<int>(c_ceil(static_cast<A>(w - x1 + 1) / bw)), wl - 1);
        for (int ph = ph0; ph <= ph1; ++ph) {
          int hs, he;
          roi_bin<A>(ph, hl, rh, y1, H, hs, he);
          if (h < hs || h >= he) continue;
          for (int pw = pw0; pw <= pw1; ++pw) {
            int ws, we;
            roi_bin<A>(pw, wl, rw, x1, W, ws, we);
            if (w < ws || w >= we) continue;
            for (int q = 0; q < MLIC_GATHER_CH && c0 + q < C; ++q) {
              const mlic_int64 i = base + static_cast<mlic_int64>(C) * off +
                                   static_cast<mlic_int64>(c0 + q) * hl * wl + ph * wl + pw;
              if (argmax[i] == pix) acc[q] += static_cast<A>(grad[i]) * s_factor[t];
            }
          }
        }
      }
    }
  }
  if (!active) return;
  for (int q = 0; q < MLIC_GATHER_CH && c0 + q < C; ++q)
    grad_in[(static_cast<mlic_int64>(b) * C + c0 + q) * H * W + pix] = acc[q];
}

#endif  // MLIC_DEVICE_CODE

}  // namespace mlic
