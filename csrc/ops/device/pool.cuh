// Caffe's Pooling layer (MAX / AVE, its ceil and padding rules), evaluated for several
// levels of (kernel, stride, pad) over the same input whose outputs are flattened
// channel-major and concatenated: one level is caffe_pool2d, the SPP pyramid is many.
// Output is [N, C*S], S = PoolLevels::cells.
#pragma once
#include "common.cuh"

namespace mlic {

// Window [hs,he) x [ws,we) of output cell (oy, ox), clipped to the input; returns the AVE
// divisor, which counts the padding as Caffe's does.
MLIC_HD int pool_window(int H, int W, const PoolLevel& p, int oy, int ox, int& hs, int& he, int& ws, int& we) {
  hs = oy * p.sh - p.pad_h;
  ws = ox * p.sw - p.pad_w;
  he = imin(hs + p.kh, H + p.pad_h);
  we = imin(ws + p.kw, W + p.pad_w);
  const int pool_size = (he - hs) * (we - ws);
  hs = imax(hs, 0);
  ws = imax(ws, 0);
  he = imin(he, H);
  we = imin(we, W);
  return pool_size;
}

// Output cell (oy, ox) of G planes at once (see window_max_planes); idx is -1 for AVE.
template <int G, typename T, typename A>
MLIC_HD void pool_cell_planes(const T* const* planes, int H, int W, const PoolLevel& p, int oy, int ox, int mode,
                              A* val, int* idx) {
  int hs, he, ws, we;
  const int pool_size = pool_window(H, W, p, oy, ox, hs, he, ws, we);
  if (mode == MLIC_POOL_MAX) {
    window_max_planes<G, T, A>(planes, W, hs, he, ws, we, val, idx);
    return;
  }
  A s[G];
  for (int k = 0; k < G; ++k) s[k] = static_cast<A>(0);
  for (int h = hs; h < he; ++h)
    for (int w = ws; w < we; ++w)
      for (int k = 0; k < G; ++k) s[k] += static_cast<A>(planes[k][h * W + w]);
  for (int k = 0; k < G; ++k) {
    val[k] = s[k] / static_cast<A>(pool_size);
    idx[k] = -1;
  }
}

template <typename T, typename A>
MLIC_HD void pool_cell(const T* plane, int H, int W, const PoolLevel& p, int oy, int ox, int mode, A& val, int& idx) {
  pool_cell_planes<1, T, A>(&plane, H, W, p, oy, ox, mode, &val, &idx);
}

// Gradient reaching input pixel (y, x) of one plane from every level, in level order
// and row-major cell order (Caffe's order of accumulation).
template <typename T, typename A>
MLIC_HD A pool_pixel_grad(const T* grad_row, const int* argmax_row, int C, int c, int H, int W,
                          const PoolLevels& lv, int y, int x) {
  A acc = static_cast<A>(0);
  for (int l = 0; l < lv.count; ++l) {
    const PoolLevel& p = lv.level[l];
    const int base = C * p.offset + c * p.oh * p.ow;
    const int oy0 = (y + p.pad_h < p.kh) ? 0 : (y + p.pad_h - p.kh) / p.sh + 1;
    const int oy1 = imin((y + p.pad_h) / p.sh + 1, p.oh);
    const int ox0 = (x + p.pad_w < p.kw) ? 0 : (x + p.pad_w - p.kw) / p.sw + 1;
    const int ox1 = imin((x + p.pad_w) / p.sw + 1, p.ow);
    for (int oy = oy0; oy < oy1; ++oy)
      for (int ox = ox0; ox < ox1; ++ox) {
        const int o = base + oy * p.ow + ox;
        if (lv.mode == MLIC_POOL_MAX) {
          if (argmax_row[o] == y * W + x) acc += static_cast<A>(grad_row[o]);
        } else {
          int hs, he, ws, we;
          acc += static_cast<A>(grad_row[o]) / static_cast<A>(pool_window(H, W, p, oy, ox, hs, he, ws, we));
        }
      }
  }
  return acc;
}

#ifdef MLIC_DEVICE_CODE

template <typename T, typename A>
__global__ void pool_forward_kernel(const T* __restrict__ x, mlic_int64 N, int C, int H, int W, PoolLevels lv,
                                    T* __restrict__ out, int* __restrict__ argmax) {
  const mlic_int64 row = static_cast<mlic_int64>(C) * lv.cells;
  const mlic_int64 total = N * row;
  for (mlic_int64 i = blockIdx.x * static_cast<mlic_int64>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<mlic_int64>(gridDim.x) * blockDim.x) {
    const mlic_int64 n = i / row;
    int j = static_cast<int>(i - n * row);
    const PoolLevel& p = lv.level[level_of(lv, C, j)];
    const int cells = p.oh * p.ow;
    const int c = j / cells, cell = j - c * cells;
    A val;
    int idx;
    pool_cell<T, A>(x + (n * C + c) * H * W, H, W, p, cell / p.ow, cell % p.ow, lv.mode, val, idx);
    out[i] = static_cast<T>(val);
    if (lv.mode == MLIC_POOL_MAX) argmax[i] = idx;
  }
}

// One thread per input pixel gathers its gradient (no atomics; argmax is only compared,
// so an out-of-range argmax cannot write out of bounds).
template <typename T, typename A>
__global__ void pool_backward_kernel(const T* __restrict__ grad, const int* __restrict__ argmax, mlic_int64 N, int C,
                                     int H, int W, PoolLevels lv, T* __restrict__ grad_in) {
  const mlic_int64 plane = static_cast<mlic_int64>(H) * W;
  const mlic_int64 total = N * C * plane;
  const mlic_int64 row = static_cast<mlic_int64>(C) * lv.cells;
  for (mlic_int64 i = blockIdx.x * static_cast<mlic_int64>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<mlic_int64>(gridDim.x) * blockDim.x) {
    const mlic_int64 nc = i / plane;
    const int pix = static_cast<int>(i - nc * plane);
    const mlic_int64 n = nc / C;
    const int c = static_cast<int>(nc - n * C);
    const int* am = lv.mode == MLIC_POOL_MAX ? argmax + n * row : argmax;
    grad_in[i] = static_cast<T>(pool_pixel_grad<T, A>(grad + n * row, am, C, c, H, W, lv, pix / W, pix % W));
  }
}

#endif  // MLIC_DEVICE_CODE

}  // namespace mlic
