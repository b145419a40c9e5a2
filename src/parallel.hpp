// parallel_for over [0, n) on up to `threads` threads, handing out indices dynamically so uneven
// work (groups of different sizes) balances; the first exception is rethrown. The calling thread
// works too, helped by threads of one process-wide pool that live across calls: a call neither
// starts threads nor finds its helpers' per-thread buffers (decoder tables, scratch) gone.
#pragma once
#include <algorithm>
#include <cstddef>
#include <thread>
#include <type_traits>

namespace cachegen {

// Most worker threads one call may ask for: beyond this, a thread count is a mistake, not a
// machine (Python's threads= check says so first; the core clamps as a last line).
constexpr int kMaxThreads = 1024;

inline int resolve_threads(int threads) {
  if (threads > 0) return std::min(threads, kMaxThreads);
  return std::max(1u, std::thread::hardware_concurrency());
}

// Runs body(ctx, i) for every i < n on the caller and up to `helpers` pool threads (fewer if
// the pool cannot start more); returns once every index has run. Calls may nest and may come
// from several threads at once.
void run_parallel(size_t n, size_t helpers, void (*body)(void* ctx, size_t i), void* ctx);

template <typename F>
void parallel_for(size_t n, int threads, F&& fn) {
  const size_t workers = std::min<size_t>(n, (size_t)resolve_threads(threads));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  using Fn = std::remove_reference_t<F>;
  run_parallel(
      n, workers - 1, [](void* f, size_t i) { (*static_cast<Fn*>(f))(i); },
      const_cast<void*>(static_cast<const void*>(&fn)));
}

}  // namespace cachegen
