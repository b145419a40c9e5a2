// parallel_for over [0, n) on up to `threads` OS threads, handing out indices dynamically so
// uneven work (groups of different sizes) balances; the first exception is rethrown.
#pragma once
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

namespace cachegen {

// Most worker threads one call may ask for: beyond this, a thread count is a mistake, not a
// machine (Python's threads= check says so first; the core clamps as a last line).
constexpr int kMaxThreads = 1024;

inline int resolve_threads(int threads) {
  if (threads > 0) return std::min(threads, kMaxThreads);
  return std::max(1u, std::thread::hardware_concurrency());
}

template <typename F>
void parallel_for(size_t n, int threads, F&& fn) {
  const size_t workers = std::min<size_t>(n, (size_t)resolve_threads(threads));
  if (workers <= 1) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      try {
        fn(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;
      }
    }
  };
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  try {
    for (size_t w = 1; w < workers; ++w) pool.emplace_back(work);
  } catch (const std::system_error& e) {
    // Out of threads (resource limits): stop the ones running and report, rather than let a
    // joinable std::thread's destructor terminate the process.
    next = n;
    for (auto& t : pool) t.join();
    throw std::runtime_error(std::string("could not start a worker thread: ") + e.what());
  }
  work();
  for (auto& t : pool) t.join();
  if (error) std::rethrow_exception(error);
}

}  // namespace cachegen
