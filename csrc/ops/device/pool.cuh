// Caffe's Pooling layer (MAX / AVE, its ceil and padding rules), evaluated for several
// "levels" of (kernel, stride, pad) over the same input whose outputs are flattened
// channel-major and concatenated: one level is caffe_pool2d, the SPP pyramid is many.
//
// `lp` holds 9 ints per level: kh, kw, sh, sw, pad_h, pad_w, oh, ow, off
// (off = output cells per channel before this level); output is [N, C*S], S = sum oh*ow.
#pragma once
#include "common.cuh"

namespace mlic {

#define MLIC_POOL_MAX 0
#define MLIC_POOL_AVE 1
#define MLIC_LP 9

// Window [hs,he) x [ws,we) of output cell (oy, ox), clipped to the input; returns the AVE
// divisor, which counts the padding as Caffe's does.
MLIC_HD int pool_window(int H, int W, const int* p, int oy, int ox, int& hs, int& he, int& ws, int& we) {
  hs = oy * p[2] - p[4];
  ws = ox * p[3] - p[5];
  he = imin(hs + p[0], H + p[4]);
  we = imin(ws + p[1], W + p[5]);
  const int pool_size = (he - hs) * (we - ws);
  hs = imax(hs, 0);
  ws = imax(ws, 0);
  he = imin(he, H);
  we = imin(we, W);
  return pool_size;
}

template <typename T, typename A>
MLIC_HD void pool_cell(const T* plane, int H, int W, const int* p, int oy, int ox, int mode, A& val, int& idx) {
  int hs, he, ws, we;
  const int pool_size = pool_window(H, W, p, oy, ox, hs, he, ws, we);
  if (mode == MLIC_POOL_MAX) {
    window_max<T, A>(plane, W, hs, he, ws, we, val, idx);
  } else {
    A s = static_cast<A>(0);
    for (int h = hs; h < he; ++h)
      for (int w = ws; w < we; ++w) s += static_cast<A>(plane[h * W + w]);
    val = s / static_cast<A>(pool_size);
    idx = -1;
  }
}

// Gradient reaching input pixel (y, x) of one plane from every level, in level order
// and row-major cell order (Caffe's order of accumulation).
template <typename T, typename A>
MLIC_HD A pool_pixel_grad(const T* grad_row, const int* argmax_row, int C, int c, int H, int W, const int* lp,
                          int nlev, int y, int x, int mode) {
  A acc = static_cast<A>(0);
  for (int l = 0; l < nlev; ++l) {
    const int* p = lp + MLIC_LP * l;
    const int kh = p[0], kw = p[1], sh = p[2], sw = p[3], ph = p[4], pw = p[5], oh = p[6], ow = p[7];
    const int base = C * p[8] + c * oh * ow;
    const int oy0 = (y + ph < kh) ? 0 : (y + ph - kh) / sh + 1;
    const int oy1 = imin((y + ph) / sh + 1, oh);
    const int ox0 = (x + pw < kw) ? 0 : (x + pw - kw) / sw + 1;
    const int ox1 = imin((x + pw) / sw + 1, ow);
    for (int oy = oy0; oy < oy1; ++oy)
      for (int ox = ox0; ox < ox1; ++ox) {
        const int o = base + oy * ow + ox;
        if (mode == MLIC_POOL_MAX) {
          if (argmax_row[o] == y * W + x) acc += static_cast<A>(grad_row[o]);
        } else {
          int hs = oy * sh - ph, ws = ox * sw - pw;
          const int he = imin(hs + kh, H + ph), we = imin(ws + kw, W + pw);
          acc += static_cast<A>(grad_row[o]) / static_cast<A>((he - hs) * (we - ws));
        }
      }
  }
  return acc;
}

#ifdef MLIC_DEVICE_CODE

template <typename T, typename A>
__global__ void pool_forward_kernel(const T* __restrict__ x, mlic_int64 N, int C, int H, int W,
                                    const int* __restrict__ lp, int nlev, int S, int mode, T* __restrict__ out,
                                    int* __restrict__ argmax) {
  const mlic_int64 row = static_cast<mlic_int64>(C) * S;
  const mlic_int64 total = N * row;
  for (mlic_int64 i = blockIdx.x * static_cast<mlic_int64>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<mlic_int64>(gridDim.x) * blockDim.x) {
    const mlic_int64 n = i / row;
    int j = static_cast<int>(i - n * row);
    int l = 0;
    while (l + 1 < nlev && j >= C * lp[MLIC_LP * (l + 1) + 8]) ++l;
    const int* p = lp + MLIC_LP * l;
    j -= C * p[8];
    const int cells = p[6] * p[7];
    const int c = j / cells, cell = j - c * cells;
    A val;
    int idx;
    pool_cell<T, A>(x + (n * C + c) * H * W, H, W, p, cell / p[7], cell % p[7], mode, val, idx);
    out[i] = static_cast<T>(val);
    if (mode == MLIC_POOL_MAX) argmax[i] = idx;
  }
}

template <typename T, typename A>
__global__ void pool_backward_kernel(const T* __restrict__ grad, const int* __restrict__ argmax, mlic_int64 N, int C,
                                     int H, int W, const int* __restrict__ lp, int nlev, int S, int mode,
                                     T* __restrict__ grad_in) {
  const mlic_int64 plane = static_cast<mlic_int64>(H) * W;
  const mlic_int64 total = N * C * plane;
  const mlic_int64 row = static_cast<mlic_int64>(C) * S;
  for (mlic_int64 i = blockIdx.x * static_cast<mlic_int64>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<mlic_int64>(gridDim.x) * blockDim.x) {
    const mlic_int64 nc = i / plane;
    const int pix = static_cast<int>(i - nc * plane);
    const mlic_int64 n = nc / C;
    const int c = static_cast<int>(nc - n * C);
    const int* am = mode == MLIC_POOL_MAX ? argmax + n * row : argmax;
    grad_in[i] = static_cast<T>(
        pool_pixel_grad<T, A>(grad + n * row, am, C, c, H, W, lp, nlev, pix / W, pix % W, mode));
  }
}

#endif  // MLIC_DEVICE_CODE

}  // namespace mlic
