// The GPU encoder's stages, run in order by encode.cu; each reproduces the CPU encoder's
// arithmetic, so the blob is byte-identical to codec.cpp's:
//   quantize.cu       statistics and quantizer parameters, symbols and per-column histograms;
//   table_fit.cu      the table fit's clustering on the device, the table count chosen on the host
//                     by the CPU's own search (tables.cpp choose_tables);
//   rans_encode.cu    one warp per segment coding backwards, then the segments' offsets;
//   blob_assembly.cu  the head (host), compaction and CRC32C (device), the blob to its memory.
#pragma once
#include <array>
#include <functional>
#include <optional>
#include <vector>

#include "common.cuh"
#include "quant.hpp"
#include "tables.hpp"

namespace cachegen::cuda {

using EncTable = std::array<rans::EncSym, kAlphabet>;

// LayerStep: per-channel terms of the pooled variance and range (quant.cpp fit_layer_step).
struct ChanTerms {
  double var, range;
};

// One group on the device: its input, fitted parameters (fp16, as stored), symbols, histograms,
// and (from stage 3 on) its encoder tables.
struct GroupDev {
  View in{};
  uint32_t tokens = 0, channels = 0;
  Quantizer kind = Quantizer::ChannelStep;
  float param = 0.0f;
  int max_symbol = 0;
  uint16_t* token_scale = nullptr;  // the scales: null where the quantizer has none
  uint16_t* channel_scale = nullptr;
  uint16_t* channel_offset = nullptr;
  const float* token_weight = nullptr;  // null: all 1
  ChanTerms* terms = nullptr;           // LayerStep only
  int8_t* symbols = nullptr;            // [tokens, channels]
  uint32_t* hist = nullptr;             // [channels, 256]
  uint8_t* fit = nullptr;               // FitOut + assignments; null: the host fits
  uint32_t table_limit = 0;             // tables.cpp table_limit of the group
  const EncTable* tables = nullptr;
  const uint8_t* table_of = nullptr;
  uint32_t num_tables = 0;
  uint32_t raw_rows = 0;  // first tokens kept verbatim: symbols zero, values copied to `raw`
  float* raw = nullptr;   // [raw_rows, channels]
};

// Host-side plan of one group: its descriptor, quantizer layout, and where its data lies in the
// encoder's device buffers.
struct GroupPlan {
  GroupDesc desc;
  GroupQuant quant;
  size_t token_scale = 0, channel_scale = 0, channel_offset = 0;  // element offsets in scales
  size_t symbols = 0, hist = 0, terms = 0, fit = 0, raw = 0;      // raw: byte offset in results
  bool gpu_fit = false;
};

// All groups' plans and the sizes of the buffers they index. Stage 1's results (the non-finite
// flag, scales, table fits, raw rows) lie in one buffer, read back to the host at once.
struct EncodePlan {
  std::vector<GroupPlan> groups;
  size_t scales = 0, symbols = 0, hists = 0, terms = 0, fits = 0, raws = 0;
  static constexpr size_t res_bad = 0, res_scales = 16;
  size_t res_fit = 0, res_raw = 0, res_bytes = 0;
};

__host__ __device__ inline size_t align16(size_t x) { return (x + 15) & ~size_t{15}; }

inline uint32_t blocks(size_t n, uint32_t per) { return (uint32_t)((n + per - 1) / per); }

// ---- stage 1: quantize.cu

// Which statistics kernels each group takes; recorded into the stage's metadata upload.
class QuantizeStage {
 public:
  QuantizeStage(const EncodeRequest& req, const EncodePlan& plan, Arena& meta);
  // Statistics and parameters, then (after `between`) symbols and histograms, queued on `st`.
  // `meta` is the uploaded metadata; `bad` is set if an input value is not finite.
  void queue(DType dtype, const uint8_t* meta, const GroupDev* devs, uint32_t* bad, cudaStream_t st,
             const std::function<void()>& between) const;

 private:
  struct Ids {
    std::vector<uint32_t> groups;
    uint32_t max_extent = 0;
    size_t at = 0;  // in the metadata
    void add(uint32_t group, uint32_t extent);
  };
  Ids token_, rows_, channel_, layer_;
  uint32_t ngroups_ = 0, max_tokens_ = 0, max_channels_ = 0;
};

// ---- stage 2: table_fit.cu

// The device fit's output per group: the clusterings of every table count it tries.
constexpr uint32_t kFitMaxK = 16;      // table counts tried: 1, 2, 4, ... <= 16
constexpr uint32_t kFitCounts = 5;     // how many those are
constexpr uint32_t kFitClusters = 31;  // their clusters together: 1 + 2 + ... + 16
constexpr uint32_t kFitMaxChannels = 4096;

// Whether the device fits a group's tables (else the host does, from its histograms).
bool fits_on_device(uint32_t tokens, uint32_t channels, uint32_t max_tables);
// Bytes of a group's fit output (FitOut, then its assignments).
size_t fit_bytes(uint32_t channels);

class TableFitStage {
 public:
  TableFitStage(const EncodePlan& plan, Arena& meta);
  void queue(const uint8_t* meta, const GroupDev* devs, cudaStream_t st) const;

 private:
  std::vector<uint32_t> ids_;
  size_t at_ = 0;
  uint32_t max_channels_ = 0;
};

// A group's tables from the device fit read back at `fit` (host memory), or nullopt where a
// cost the search used could have rounded differently from the host's (then the host fits).
std::optional<TableSet> tables_from_fit(const uint8_t* fit, uint32_t channels, uint32_t limit);

// ---- stage 3: rans_encode.cu

// One segment's place: its group, tokens, and its worst-case region in the coding buffer
// (states, then room for one word per symbol).
struct SegmentDev {
  uint32_t group, token_begin, token_count;
  uint64_t region;
};

// The segments of every group and their blocks of work (tables in shared memory or not).
struct SegmentPlan {
  std::vector<SegmentDev> segs;
  std::vector<Work> work[2];  // [0]: tables fit in shared memory
  uint64_t region_bytes = 0;
  uint32_t shared_bytes = 0;
};
SegmentPlan plan_segments(const EncodePlan& plan, const std::vector<GroupDev>& devs);

// Codes every segment into its region of `buf`, its size into sizes[i]; then offsets[0..n] the
// exclusive prefix sum of the sizes (offsets[n]: the payload's size).
void queue_rans(const SegmentPlan& sp, const SegmentDev* segs, const Work* const work[2],
                const GroupDev* devs, uint8_t* buf, uint32_t* sizes, uint64_t* offsets,
                cudaStream_t st);

// ---- stage 4: blob_assembly.cu

// Fills a head written with placeholder segment sizes: the blob's total size and the index.
void patch_head(std::vector<uint8_t>& head, const uint32_t* sizes, uint32_t nseg,
                uint64_t payload_bytes);

// Stage 3's output on the device: each segment's region and size, and its payload offset.
struct CodedSegments {
  uint32_t count;
  const SegmentDev* segs;
  const GroupDev* devs;
  const uint8_t* regions;
  const uint32_t* sizes;
  const uint64_t* offsets;
  uint64_t payload_bytes;
};

// The segments compacted into the payload after `head`, the CRC32C trailer, the blob in memory
// from `alloc` (device memory on the encoder's device with device_out, else host memory).
void assemble_blob(const std::vector<uint8_t>& head, const CodedSegments& coded,
                   const BlobAllocator& alloc, bool device_out, int threads, cudaStream_t st,
                   StageTimer& timer);

}  // namespace cachegen::cuda
