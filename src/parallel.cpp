#include "parallel.hpp"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <system_error>
#include <vector>

namespace cachegen {
namespace {

// One parallel_for call: indices are claimed with `next`; helpers join while seats are left.
struct Job {
  size_t n;
  void (*body)(void*, size_t);
  void* ctx;
  std::atomic<size_t> next{0};
  size_t seats;       // helpers that may still join (under the pool's mutex)
  size_t inside = 0;  // helpers working on it now (under the pool's mutex)
  std::exception_ptr error;
  std::mutex error_mutex;

  void work() {
    for (size_t i; (i = next.fetch_add(1)) < n;) {
      try {
        body(ctx, i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
        next = n;
      }
    }
  }
};

// Threads that wait for jobs. Never destroyed: its threads may outlive static destruction at
// exit, where they sleep until the process ends.
class Pool {
 public:
  void run(Job& job) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      grow(job.seats);
      jobs_.push_back(&job);
    }
    wake_.notify_all();
    job.work();
    std::unique_lock<std::mutex> lock(mutex_);
    jobs_.erase(std::find(jobs_.begin(), jobs_.end(), &job));  // no helper joins from here on
    left_.wait(lock, [&] { return job.inside == 0; });
  }

 private:
  // Starts threads until `want` are idle or the system refuses more; a job then runs with
  // the helpers it has (the caller alone, at worst).
  void grow(size_t want) {
    while (idle_ < want && threads_ < (size_t)kMaxThreads) {
      try {
        std::thread([this] { serve(); }).detach();
      } catch (const std::system_error&) {
        return;
      }
      ++threads_;
      ++idle_;
    }
  }

  Job* open_job() const {
    for (Job* j : jobs_)
      if (j->seats && j->next.load() < j->n) return j;
    return nullptr;
  }

  void serve() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      Job* job;
      wake_.wait(lock, [&] { return (job = open_job()) != nullptr; });
      --job->seats;
      ++job->inside;
      --idle_;
      lock.unlock();
      job->work();
      lock.lock();
      ++idle_;
      if (--job->inside == 0) left_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable wake_, left_;
  std::deque<Job*> jobs_;
  size_t threads_ = 0, idle_ = 0;
};

Pool* g_pool = nullptr;
std::once_flag g_pool_once;

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool;
    // A forked child has the pool's memory but none of its threads: it starts a pool of its own.
    pthread_atfork(nullptr, nullptr, [] { g_pool = new Pool; });
  });
  return *g_pool;
}

}  // namespace

void run_parallel(size_t n, size_t helpers, void (*body)(void* ctx, size_t i), void* ctx) {
  Job job;
  job.n = n;
  job.body = body;
  job.ctx = ctx;
  job.seats = helpers;
  pool().run(job);
  if (job.error) std::rethrow_exception(job.error);
}

}  // namespace cachegen
