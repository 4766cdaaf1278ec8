// Just enough of CUDA to run the kernels of ../device/*.cuh on the host, so that a machine
// without a GPU still tests them (indexing, launch geometry, the kernels' own arithmetic;
// not CUDA's libm or its scheduling). Kernels run as the host code launches them: a plain
// launch walks blocks and threads in order; a launch of a kernel that calls __syncthreads
// starts one host thread per CUDA thread and walks the grid block by block, __syncthreads
// being a barrier. __shared__ arrays are statics (one block at a time); atomicAdd is an
// atomic_ref. Launches are serialised.
#pragma once
#include <atomic>
#include <barrier>
#include <mutex>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

// The kernels name these unqualified, as CUDA's built-ins.
inline thread_local dim3 threadIdx, blockIdx;
inline thread_local dim3 blockDim, gridDim;

namespace mlic {
namespace emu {

inline std::barrier<>* block_barrier = nullptr;

template <typename T>
inline void atomic_add(T* p, T v) {
  std::atomic_ref<T>(*p).fetch_add(v, std::memory_order_relaxed);
}

struct Stream {};

inline std::mutex& launch_mutex() {
  static std::mutex m;
  return m;
}

// A kernel without __syncthreads: every (block, thread) in order on this thread.
template <typename K, typename... Args>
void launch(K k, dim3 grid, dim3 block, Stream, Args&&... args) {
  const auto kernel = k.fn;
  std::lock_guard<std::mutex> lock(launch_mutex());
  gridDim = grid;
  blockDim = block;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx)
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx) {
              blockIdx = dim3(bx, by, bz);
              threadIdx = dim3(tx, ty, tz);
              kernel(args...);
            }
}

// A kernel that synchronises its block: one host thread per CUDA thread of a block.
template <typename K, typename... Args>
void launch_block_sync(K k, dim3 grid, dim3 block, Stream, Args&&... args) {
  const auto kernel = k.fn;
  std::lock_guard<std::mutex> lock(launch_mutex());
  const unsigned n = block.x * block.y * block.z;
  std::barrier<> barrier(n);
  block_barrier = &barrier;
  auto run = [&](unsigned t) {
    gridDim = grid;
    blockDim = block;
    threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
    for (unsigned bz = 0; bz < grid.z; ++bz)
      for (unsigned by = 0; by < grid.y; ++by)
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          blockIdx = dim3(bx, by, bz);
          kernel(args...);
          barrier.arrive_and_wait();  // the block's __shared__ statics are free again
        }
  };
  std::vector<std::thread> threads;
  threads.reserve(n - 1);
  for (unsigned t = 1; t < n; ++t) threads.emplace_back(run, t);
  run(0);
  for (auto& th : threads) th.join();
  block_barrier = nullptr;
}

}  // namespace emu
}  // namespace mlic

inline void __syncthreads() { mlic::emu::block_barrier->arrive_and_wait(); }

#define __global__
#define __shared__ static
#define MLIC_ATOMIC_ADD(ptr, val) ::mlic::emu::atomic_add((ptr), (val))
#define MLIC_EMULATED_DEVICE_CODE 1
