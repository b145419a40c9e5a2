// Stage 2 of the GPU encoder: the table fit. The device runs tables.cpp's clustering step for
// step for every table count up to kFitMaxK (initial split by spread rank, kLloydRounds rounds of
// merge / -log2 costs / reassignment); the host then picks the count with the CPU's own search
// (choose_tables) over those clusterings. Every sum runs in the host's order, so the doubles
// agree bit for bit; log2 is the one operation not correctly rounded on either side, so each cost
// is checked to round to the same float from anywhere within a few ulps, else the group is
// fitted on the host.
#include "encode_stages.cuh"

namespace cachegen::cuda {
namespace {

constexpr uint32_t kFitThreads = 512;

// A group's fit output: per table count tried (k = 2^i), whether a cost so far was unsafe, and
// the k merged clusters (rows k - 1 ..); then kFitCounts x channels bytes of each count's
// channel -> cluster assignment.
struct FitOut {
  uint32_t tried;
  uint32_t unsafe[kFitCounts];
  uint32_t pad[2];
  uint32_t merged[kFitClusters][kAlphabet];
};
static_assert(sizeof(FitOut) % 16 == 0, "assignments follow 16-byte aligned");

size_t fit_shared_bytes(uint32_t channels) {
  return align16(8ull * channels) + align16(2ull * channels) + align16(channels) +
         2 * kFitMaxK * kAlphabet * 4;
}

__device__ float guarded_cost(uint32_t count, double total, uint32_t* unsafe) {
  const double d = -log2((count + 0.5) / total);
  const float f = (float)d;
  if ((float)(d * (1.0 - 0x1p-50)) != f || (float)(d * (1.0 + 0x1p-50)) != f) *unsafe = 1;
  return f;
}

__global__ void __launch_bounds__(kFitThreads)
    fit_tables_kernel(const GroupDev* groups, const uint32_t* ids) {
  extern __shared__ uint4 smem[];
  __shared__ uint32_t all[kAlphabet];
  __shared__ double totals[kFitMaxK];
  __shared__ int s_lo, s_hi;
  __shared__ uint32_t s_unsafe;
  const GroupDev& g = groups[ids[blockIdx.x]];
  const uint32_t C = g.channels, tid = threadIdx.x, nt = blockDim.x;
  const uint32_t* hist = g.hist;
  FitOut* out = reinterpret_cast<FitOut*>(g.fit);
  uint8_t* assigns = g.fit + sizeof(FitOut);
  uint8_t* base = reinterpret_cast<uint8_t*>(smem);
  double* spread = reinterpret_cast<double*>(base);
  uint16_t* rank = reinterpret_cast<uint16_t*>(base + align16(8ull * C));
  uint8_t* assign = base + align16(8ull * C) + align16(2ull * C);
  uint32_t* merged = reinterpret_cast<uint32_t*>(assign + align16(C));
  float* cost = reinterpret_cast<float*>(merged + kFitMaxK * kAlphabet);

  // Used range of the group's total histogram.
  for (uint32_t i = tid; i < kAlphabet; i += nt) {
    uint32_t s = 0;
    for (uint32_t c = 0; c < C; ++c) s += hist[(size_t)c * kAlphabet + i];
    all[i] = s;
  }
  if (tid == 0) s_unsafe = 0;
  __syncthreads();
  if (tid == 0) {
    int lo = 0, hi = -1;
    for (int i = 0; i < kAlphabet; ++i)
      if (all[i]) {
        if (hi < 0) lo = i;
        hi = i;
      }
    s_lo = lo;
    s_hi = hi;
  }
  __syncthreads();
  const int lo = s_lo, hi = s_hi;
  const uint32_t span_n = (uint32_t)(hi - lo + 1);

  // Spread (mean |index - 128|) of each channel, then its rank in a stable sort by spread.
  for (uint32_t c = tid; c < C; c += nt) {
    double n = 0.0, s = 0.0;
    for (int i = lo; i <= hi; ++i) {
      const uint32_t h = hist[(size_t)c * kAlphabet + i];
      n += h;
      s += h * (uint32_t)abs(i - 128);
    }
    spread[c] = n > 0 ? s / n : 0.0;
  }
  __syncthreads();
  for (uint32_t c = tid; c < C; c += nt) {
    const double d = spread[c];
    uint32_t r = 0;
    for (uint32_t c2 = 0; c2 < C; ++c2) {
      const double d2 = spread[c2];
      r += d2 < d || (d2 == d && c2 < c);
    }
    rank[c] = (uint16_t)r;
  }
  __syncthreads();

  auto merge = [&](const uint8_t* by, uint32_t k) {
    for (uint32_t i = tid; i < k * kAlphabet; i += nt) merged[i] = 0;
    __syncthreads();
    for (uint32_t c = tid; c < C; c += nt) {
      uint32_t* m = merged + by[c] * kAlphabet;
      for (int i = lo; i <= hi; ++i) {
        const uint32_t h = hist[(size_t)c * kAlphabet + i];
        if (h) atomicAdd(m + i, h);
      }
    }
    __syncthreads();
  };

  uint32_t tried = 0;
  for (uint32_t k = 1; k <= g.table_limit && k <= kFitMaxK; k *= 2, ++tried) {
    for (uint32_t c = tid; c < C; c += nt) assign[c] = (uint8_t)((uint64_t)rank[c] * k / C);
    __syncthreads();
    for (int round = 0; round < kLloydRounds; ++round) {
      merge(assign, k);
      if (tid < k) {
        double total = 0.0;
        for (int i = lo; i <= hi; ++i) total += merged[tid * kAlphabet + i] + 0.5;
        totals[tid] = total;
      }
      __syncthreads();
      for (uint32_t x = tid; x < k * span_n; x += nt) {
        const uint32_t j = x / span_n, i = lo + x % span_n;
        cost[j * kAlphabet + i] = guarded_cost(merged[j * kAlphabet + i], totals[j], &s_unsafe);
      }
      __syncthreads();
      for (uint32_t c = tid; c < C; c += nt) {
        double b[kFitMaxK];
#pragma unroll
        for (uint32_t j = 0; j < kFitMaxK; ++j) b[j] = 0.0;
        for (int i = lo; i <= hi; ++i) {
          const double h = hist[(size_t)c * kAlphabet + i];
#pragma unroll
          for (uint32_t j = 0; j < kFitMaxK; ++j)
            if (j < k) b[j] = __dadd_rn(b[j], __dmul_rn(h, (double)cost[j * kAlphabet + i]));
        }
        double best = INFINITY;
        uint32_t pick = 0;
#pragma unroll
        for (uint32_t j = 0; j < kFitMaxK; ++j)
          if (j < k && b[j] < best) best = b[j], pick = j;
        assign[c] = (uint8_t)pick;
      }
      __syncthreads();
    }
    if (tid == 0) out->unsafe[tried] = s_unsafe;
    merge(assign, k);
    for (uint32_t i = tid; i < k * kAlphabet; i += nt) (&out->merged[k - 1][0])[i] = merged[i];
    for (uint32_t c = tid; c < C; c += nt) assigns[(size_t)tried * C + c] = assign[c];
    __syncthreads();
  }
  if (tid == 0) out->tried = tried;
}

}  // namespace

bool fits_on_device(uint32_t tokens, uint32_t channels, uint32_t max_tables) {
  return channels <= kFitMaxChannels && table_limit(max_tables, channels) < 2 * kFitMaxK &&
         (uint64_t)tokens * channels < (1ull << 32);
}

size_t fit_bytes(uint32_t channels) { return align16(sizeof(FitOut) + kFitCounts * channels); }

TableFitStage::TableFitStage(const EncodePlan& plan, Arena& meta) {
  for (uint32_t i = 0; i < plan.groups.size(); ++i)
    if (plan.groups[i].gpu_fit) {
      ids_.push_back(i);
      max_channels_ = std::max(max_channels_, plan.groups[i].desc.channels());
    }
  at_ = meta.add(ids_);
}

void TableFitStage::queue(const uint8_t* meta, const GroupDev* devs, cudaStream_t st) const {
  if (ids_.empty()) return;
  const size_t shared = fit_shared_bytes(max_channels_);
  CG_CUDA(cudaFuncSetAttribute(fit_tables_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               (int)shared));
  fit_tables_kernel<<<ids_.size(), kFitThreads, shared, st>>>(
      devs, reinterpret_cast<const uint32_t*>(meta + at_));
}

std::optional<TableSet> tables_from_fit(const uint8_t* fit, uint32_t channels, uint32_t limit) {
  const auto& f = *reinterpret_cast<const FitOut*>(fit);
  const uint8_t* assigns = fit + sizeof(FitOut);
  uint32_t last = 0;  // the largest count the search looked at
  bool missing = false;
  TableSet ts = choose_tables(limit, [&](uint32_t k) {
    Clusters cl;
    const uint32_t i = (uint32_t)__builtin_ctz(k);
    last = i;
    if (i >= f.tried) {  // never: fits_on_device keeps the limit within the counts tried
      missing = true;
      return cl;
    }
    for (uint32_t j = 0; j < k; ++j) {
      cl.merged.emplace_back();
      std::copy(f.merged[k - 1 + j], f.merged[k - 1 + j] + kAlphabet, cl.merged.back().begin());
    }
    cl.assign.assign(assigns + (size_t)i * channels, assigns + (size_t)(i + 1) * channels);
    return cl;
  });
  if (missing || f.unsafe[last]) return std::nullopt;
  return ts;
}

}  // namespace cachegen::cuda
