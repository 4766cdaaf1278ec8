// Shared by the C++ CPU kernels, the compiled CUDA kernels and the NVRTC runtime path.
// Only plain C++ and CUDA builtins here: no torch headers, no std headers under NVRTC.
#pragma once

#if defined(__CUDACC__) || defined(__CUDACC_RTC__)
#define MLIC_HD __host__ __device__ __forceinline__
#define MLIC_D __device__ __forceinline__  // device only: uses the block (__syncthreads, blockDim)
#define MLIC_DEVICE_CODE 1
#else
#define MLIC_HD inline
#define MLIC_D inline
#include <cmath>
#include <cstdint>
#ifdef MLIC_EMULATED_DEVICE_CODE  // the kernels too, run on the host (emulation/cuda_on_host.h)
#define MLIC_DEVICE_CODE 1
#endif
#endif

#ifdef __CUDACC_RTC__
typedef long long mlic_int64;
#else
typedef int64_t mlic_int64;
#endif

namespace mlic {

// C's round(): half away from zero, in the type the value was computed in.
MLIC_HD float c_round(float v) { return roundf(v); }
MLIC_HD double c_round(double v) { return round(v); }
MLIC_HD float c_floor(float v) { return floorf(v); }
MLIC_HD double c_floor(double v) { return floor(v); }
MLIC_HD float c_ceil(float v) { return ceilf(v); }
MLIC_HD double c_ceil(double v) { return ceil(v); }
MLIC_HD float c_exp(float v) { return expf(v); }
MLIC_HD double c_exp(double v) { return exp(v); }

template <typename T> MLIC_HD T lowest();
// Caffe starts its max from -FLT_MAX for every Dtype: for double that is FLT_MAX widened.
template <> MLIC_HD float lowest<float>() { return -3.402823466e+38f; }
template <> MLIC_HD double lowest<double>() { return static_cast<double>(-3.402823466e+38f); }

MLIC_HD int imin(int a, int b) { return a < b ? a : b; }
MLIC_HD int imax(int a, int b) { return a > b ? a : b; }

// Levels of one op call, passed to the kernels by value (no device copy, no host sync).
// The host side (frontend) fills them and checks that every size and index product the
// kernels form in int fits in int.
#define MLIC_MAX_LEVELS 16

// One grid of RoI pooling: h x w bins; `offset` counts the cells per channel of the
// levels before it (the level's block starts at C * offset in a RoI's output row).
struct RoiLevel {
  int h, w, offset;
};
struct RoiLevels {
  int count;  // levels in use
  int cells;  // S: cells per channel of one RoI, sum of h * w
  RoiLevel level[MLIC_MAX_LEVELS];
};

// One level of Caffe pooling: kernel, stride, padding and output size per axis;
// `offset` as RoiLevel's.
struct PoolLevel {
  int kh, kw, sh, sw, pad_h, pad_w, oh, ow, offset;
};
struct PoolLevels {
  int count;
  int cells;  // S: output cells per channel, sum of oh * ow
  int mode;   // MLIC_POOL_MAX or MLIC_POOL_AVE
  PoolLevel level[MLIC_MAX_LEVELS];
};

// Largest |coordinate * spatial_scale| of a RoI (2^29): sums of two fit an int.
#define MLIC_ROI_COORD_LIMIT 536870912.0

#define MLIC_POOL_MAX 0
#define MLIC_POOL_AVE 1

// Level of cell j in [0, C*S) of one output row (a RoI's or an image's) for RoiLevels or
// PoolLevels: level l's block starts at C * offset; j becomes the index inside the level.
template <typename Levels>
MLIC_HD int level_of(const Levels& lv, int C, int& j) {
  int l = 0;
  while (l + 1 < lv.count && j >= C * lv.level[l + 1].offset) ++l;
  j -= C * lv.level[l].offset;
  return l;
}

// A window's running maximum as Caffe's MAX pooling and ROIPooling keep it: from -FLT_MAX
// and index -1, then a strict '>' for each value in row-major order, so the first maximum
// wins and NaN never does. Branch-free, so that loops over channels vectorise.
template <typename A>
MLIC_HD void max_start(A& m, int& mi) {
  m = lowest<A>();
  mi = -1;
}

// A and I may also be GCC vector types (lanes of values and of indices), with the same rule
// per lane.
template <typename A, typename I>
MLIC_HD void max_step(A v, I pos, A& m, I& mi) {
  const auto gt = v > m;
  m = gt ? v : m;
  mi = gt ? pos : mi;
}

// Max over [hs,he) x [ws,we) of G planes at once (max_start, max_step); index h*W+w, -1 if
// none. The planes are scanned side by side (independent chains of compares overlap on
// the CPU); each plane's result is that of scanning it alone.
template <int G, typename T, typename A>
MLIC_HD void window_max_planes(const T* const* planes, int W, int hs, int he, int ws, int we, A* val, int* idx) {
  A m[G];
  int mi[G];
  for (int k = 0; k < G; ++k) max_start(m[k], mi[k]);
  for (int h = hs; h < he; ++h)
    for (int w = ws; w < we; ++w)
      for (int k = 0; k < G; ++k) max_step<A, int>(static_cast<A>(planes[k][h * W + w]), h * W + w, m[k], mi[k]);
  for (int k = 0; k < G; ++k) {
    val[k] = m[k];
    idx[k] = mi[k];
  }
}

template <typename T, typename A>
MLIC_HD void window_max(const T* plane, int W, int hs, int he, int ws, int we, A& val, int& idx) {
  window_max_planes<1, T, A>(&plane, W, hs, he, ws, we, &val, &idx);
}

}  // namespace mlic
