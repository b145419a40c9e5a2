#include "codec.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <numeric>
#include <string>
#include <tuple>

#include "parallel.hpp"
#include "segment.hpp"
#include "segment_encode.hpp"

namespace cachegen {
namespace {

// Per-thread buffers reused across groups and calls: big fresh allocations cost page faults.
struct Scratch {
  std::vector<int8_t> symbols;  // [tokens, channels] of the group in hand
  std::vector<Histogram> hists;
  std::vector<uint16_t> words;
};

// Scratch a thread keeps once a group is done: a typical group's symbols, not the largest's.
constexpr size_t kKeptScratchBytes = 8u << 20;

Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

// Group payload buffers kept from call to call, up to about kKeptPayloadBytes of written bytes
// in all: a fresh buffer's pages fault in as the coder first writes them, which cost a large
// cache's encode more than a tenth of its time.
class PayloadPool {
 public:
  static constexpr size_t kKeptPayloadBytes = 64u << 20;

  std::vector<uint8_t> take() {
    std::lock_guard<std::mutex> lock(mu_);
    if (kept_.empty()) return {};
    std::vector<uint8_t> v = std::move(kept_.back());
    kept_.pop_back();
    bytes_ -= v.size();
    return v;
  }

  void give(std::vector<uint8_t>& v) {
    std::lock_guard<std::mutex> lock(mu_);
    if (bytes_ + v.size() > kKeptPayloadBytes) return;
    bytes_ += v.size();
    kept_.push_back(std::move(v));
  }

 private:
  std::mutex mu_;
  std::vector<std::vector<uint8_t>> kept_;  // as written (size() = bytes written; taker clears)
  size_t bytes_ = 0;
};

PayloadPool& payload_pool() {
  static PayloadPool pool;
  return pool;
}

void check_spec(const GroupSpec& s, size_t index) {
  const TensorView& v = s.view;
  const std::string where = "group " + std::to_string(index) + ": ";
  if (!v.data) throw InputError(where + "null tensor data");
  if (v.tokens < 1 || v.tokens > kMaxTokens) throw InputError(where + "token count out of range");
  if (v.heads < 1 || v.heads > kMaxHeads) throw InputError(where + "head count out of range");
  if (v.head_dim < 1 || v.head_dim > kMaxHeadDim) throw InputError(where + "head dim out of range");
  if (v.channels() > kMaxChannels) throw InputError(where + "too many channels");
  if (s.max_tables < 1 || s.max_tables > 255)
    throw InputError(where + "max_tables not in [1, 255]");
  check_paging(v, "group " + std::to_string(index));
}

uint32_t segment_tokens(uint32_t target_symbols, uint32_t channels) {
  const uint32_t cap = kMaxSegmentSymbols / channels;
  return std::clamp<uint32_t>(target_symbols / channels, 1, std::max(cap, 1u));
}

// Quantize a group (or split it into byte planes) into `symbols` and fit its tables.
Group fit_group(const GroupSpec& s, uint32_t segment_symbols, CpuPath path, int8_t* symbols) {
  const TensorView& v = s.view;
  const uint32_t T = v.tokens, C = v.channels();
  Group g;
  g.desc = plan_group(s, segment_symbols);
  g.quant = fit_quantizer(s.quantizer, s.param, v, s.weights, s.raw_rows, path);
  std::vector<Histogram>& hists = scratch().hists;
  hists.assign(g.desc.symbols_per_token(), Histogram{});
  if (s.quantizer == Quantizer::Lossless)
    split_planes(v, symbols, hists[0].data());
  else
    quantize_group(g.quant, expand_params(g.quant, T, C), v, path, s.weights.shape, symbols,
                   hists[0].data(), g.quant.overflow);
  // Nothing overflowed: the blob stays in the version before overflow lists.
  if (g.quant.overflow.empty()) g.quant.flags &= (uint8_t)~kOverflow;
  g.tables = fit_tables(hists, s.max_tables, path);
  return g;
}

// Append one segment (symbols[0, n) coded backwards) to `out`: states, then words. `words_end`
// is the end of scratch with room for one word per symbol plus kWordSlack, so a flush is a store
// plus a counter bump rather than a mispredicted branch.
void encode_segment(CpuPath path, const int8_t* sym, size_t n, const EncodeTables& t,
                    uint16_t* words_end, std::vector<uint8_t>& out) {
  uint32_t state[rans::kLanes];
  std::fill(state, state + rans::kLanes, rans::kLowerBound);
  const uint16_t* top = encode_symbols(path, sym, n, t, state, words_end);
  const size_t at = out.size(), nw = (size_t)(words_end - top);
  out.resize(at + rans::kStateBytes + nw * 2);
  std::memcpy(out.data() + at, state, rans::kStateBytes);
  std::memcpy(out.data() + at + rans::kStateBytes, top, nw * 2);
}

EncodedGroup encode_group(const GroupSpec& s, uint32_t segment_symbols, CpuPath path) {
  Scratch& sc = scratch();
  const GroupDesc plan = plan_group(s, segment_symbols);
  const size_t n = (size_t)plan.tokens * plan.symbols_per_token();
  sc.symbols.resize(n);
  EncodedGroup e{fit_group(s, segment_symbols, path, sc.symbols.data()), payload_pool().take(), {}};
  e.payload.clear();
  const GroupDesc& d = e.group.desc;
  const uint32_t W = d.symbols_per_token();
  sc.words.resize((size_t)d.seg_tokens * W + kWordSlack);
  // At most 12 bits per symbol plus states: reserving avoids regrowth copies.
  e.payload.reserve(n * 3 / 2 + (size_t)d.num_segments * rans::kStateBytes);
  const EncoderTables tables(e.group.tables);
  for (uint32_t t0 = 0; t0 < d.tokens; t0 += d.seg_tokens) {
    const size_t before = e.payload.size();
    const uint32_t tokens = std::min(d.seg_tokens, d.tokens - t0);
    encode_segment(path, sc.symbols.data() + (size_t)t0 * W, (size_t)tokens * W, tables.view(),
                   sc.words.data() + sc.words.size(), e.payload);
    e.segment_bytes.push_back((uint32_t)(e.payload.size() - before));
  }
  // Pool threads keep their scratch between calls; a big group's symbols are not worth keeping.
  if (sc.symbols.capacity() > kKeptScratchBytes) std::vector<int8_t>().swap(sc.symbols);
  return e;
}

// Decoder tables of a layer's K and V groups, built per thread on first use and kept while the
// thread's segments stay in that layer (decode_into hands out a layer's K and V segments
// interleaved). One per thread, living across calls so its memory is reused; `call` tells
// calls apart.
class LutCache {
 public:
  const DecodeTables& get(const ParsedBlob& blob, uint64_t call, uint32_t group) {
    Slot& s = slots_[group % 2];
    if (call == s.call && group == s.group) return s.tables;
    const TableSet& ts = blob.groups[group].tables;
    s.luts.resize(ts.tables.size() * rans::kProbScale);
    for (size_t t = 0; t < ts.tables.size(); ++t)
      fill_decoder_lut(ts.tables[t], s.luts.data() + t * rans::kProbScale);
    fill_channel_offsets(ts.channel_table, s.offsets);
    s.tables = {s.luts.data(), s.offsets.data(), (uint32_t)ts.channel_table.size()};
    s.call = call;
    s.group = group;
    return s.tables;
  }

 private:
  struct Slot {
    uint64_t call = 0;
    uint32_t group = 0;
    std::vector<uint32_t> luts, offsets;
    DecodeTables tables;
  };
  Slot slots_[2];
};

// A layer's K and V groups' fp32 parameters, expanded per thread on first use like LutCache:
// decode memory is the output plus two groups' parameters per thread, not every group's at once.
class ParamCache {
 public:
  const DequantParams& get(const ParsedBlob& blob, uint64_t call, uint32_t group) {
    Slot& s = slots_[group % 2];
    if (call != s.call || group != s.group) {
      const GroupDesc& d = blob.groups[group].desc;
      s.params = {};  // the previous group's memory goes before the next one's is taken
      s.params = expand_params(blob.groups[group].quant, d.tokens, d.channels());
      s.call = call;
      s.group = group;
    }
    return s.params;
  }

 private:
  struct Slot {
    uint64_t call = 0;
    uint32_t group = 0;
    DequantParams params;
  };
  Slot slots_[2];
};

void check_outputs(const ParsedBlob& blob, const std::vector<TensorView>& outs) {
  if (outs.size() != blob.groups.size()) throw InputError("need one output per (layer, K/V)");
  for (size_t g = 0; g < outs.size(); ++g) {
    const GroupDesc& d = blob.groups[g].desc;
    const TensorView& v = outs[g];
    if (!v.data || v.tokens != d.tokens || v.heads != d.heads || v.head_dim != d.head_dim)
      throw InputError("output " + std::to_string(g) + " has the wrong shape");
    if (d.quantizer == Quantizer::Lossless && v.dtype != blob.header.dtype)
      throw InputError("a lossless blob decodes only into its own dtype");
    check_paging(v, "output " + std::to_string(g));
  }
}

std::atomic<uint64_t> g_calls{0};

LutCache& lut_cache() {
  thread_local LutCache luts;
  return luts;
}

// Decode a segment's symbols into a per-thread scratch buffer.
const int8_t* segment_symbols(const ParsedBlob& blob, const uint8_t* data, uint64_t call,
                              CpuPath path, const Segment& s) {
  thread_local std::vector<int8_t> scratch;
  const DecodeTables& t = lut_cache().get(blob, call, s.group);
  scratch.resize((size_t)s.token_count * t.channels);
  decode_segment(path, data + s.offset, s.bytes, s.token_count, t, scratch.data());
  return scratch.data();
}

// Symbols per tile of the fused decode: the tile's symbols stay in L1 while its rows are
// reconstructed and written out.
constexpr uint32_t kTileSymbols = 1u << 13;

// Rows written through the caches are prefetched this far ahead of the row being written: a
// paged output's rows jump from block to block, where the hardware prefetchers lose the stream.
constexpr uint32_t kPrefetchRows = 12;

// Tiles of a token-adjacent output end on a multiple of this many tokens, so its transposes move
// whole pieces (no element-wise tail) and a channel's tokens of a tile fill whole 64-byte lines
// of 16-bit elements (in blocks of a multiple of 32 tokens, as the vLLM CPU backend's are).
constexpr uint32_t kTransposeTokens = 32;

// Where the fused decode writes a reconstructed row: whole (dense rows), head by head (each
// head's dims contiguous: FlashAttention pages), or into a staging tile placed afterwards
// (the vLLM CPU backend's transposed key pages, element-strided views).
enum class Placement { Rows, Heads, Staged };

Placement placement_of(const TensorView& v) {
  if (v.dense_rows()) return Placement::Rows;
  return v.s_dim == 1 && v.s_token != 1 ? Placement::Heads : Placement::Staged;
}

// Whether every head run of a Heads output is whole 64-byte lines. Such runs are written past
// the caches (RowRuns::stream): each lands in its own block, where a cached store first reads
// the line from memory. Dense rows keep cached stores, which measured faster there (the hardware
// prefetchers follow them).
bool streams_heads(const TensorView& v) {
  const int64_t e = (int64_t)dtype_size(v.dtype);
  const bool lines = v.s_head * e % 64 == 0 && v.s_token * e % 64 == 0 &&
                     (!v.block_table || v.s_block * e % 64 == 0);
  return lines && whole_lines(v.data, v.head_dim, v.dtype);
}

// Whether a Staged output's rows leave through transposes that write whole 64-byte lines past
// the caches (transpose_tile_avx512: 16-bit elements, aligned 32-token pieces of a channel).
bool streams_transposes(const TensorView& v, CpuPath path) {
  const bool lines = v.s_dim * 2 % 64 == 0 && v.s_head * 2 % 64 == 0 &&
                     (!v.block_table || v.s_block * 2 % 64 == 0);
  return path == CpuPath::Avx512 && v.s_token == 1 && dtype_size(v.dtype) == 2 && lines &&
         (uintptr_t)v.data % 64 == 0;
}

// Rows of the tile at row k0 of a segment of `count`: at most `rows`, cut to end on a multiple of
// kTransposeTokens (the segment's last tile excepted) for a token-adjacent output.
uint32_t tile_rows(const TensorView& v, uint32_t t0, uint32_t k0, uint32_t count, uint32_t rows) {
  const uint32_t n = std::min(rows, count - k0), over = (t0 + n) % kTransposeTokens;
  return v.s_token == 1 && k0 + n < count && n > over ? n - over : n;
}

// The byte address of a view's rows, token after token up to `end`: the block table is read as
// each block starts instead of a division for every row.
class RowWalk {
 public:
  RowWalk(const TensorView& v, uint32_t token, uint32_t end)
      : v_(v), step_(v.s_token * (int64_t)dtype_size(v.dtype)), token_(token), end_(end) {
    seek();
  }
  uint32_t token() const { return token_; }
  uint8_t* row() const { return row_; }
  void next() {
    if (++token_ == end_) return;
    if (v_.block_table && ++in_block_ == v_.block_size) return seek();
    row_ += step_;
  }

 private:
  void seek() {
    if (token_ == end_) return;
    row_ = static_cast<uint8_t*>(v_.data) + v_.token_offset(token_) * (int64_t)dtype_size(v_.dtype);
    in_block_ = v_.block_table ? token_ % v_.block_size : 0;
  }
  const TensorView& v_;
  const int64_t step_;
  uint32_t token_, end_, in_block_ = 0;
  uint8_t* row_ = nullptr;
};

// A tile's n rows (row k's scale a[k]) reconstructed and converted into dsts[k], each laid out
// as `runs`.
void dequantize_tile(CpuPath path, const int8_t* sym, const float* a, const DequantParams& p,
                     uint32_t n, RowRuns runs, DType dtype, uint8_t* const* dsts) {
  on_path(path, dequantize_rows_scalar, dequantize_rows_avx2, dequantize_rows_avx512)(
      sym, a, p.b.data(), p.o.data(), (uint32_t)p.b.size(), n, runs, dtype, dsts);
}

// A quantized segment decoded a tile of rows at a time, each tile's rows reconstructed and
// converted in the output's dtype straight into the output where its heads' dims are
// contiguous, else into a staging tile that is then placed. Rows of a corrupt segment may be
// written before the stream's end reports it.
void decode_fused(const ParsedBlob& blob, const uint8_t* data, uint64_t call, CpuPath path,
                  const Segment& s, const DequantParams& p, const TensorView& v) {
  thread_local std::vector<int8_t> tile_buffer;
  thread_local std::vector<uint8_t> staged_buffer;
  thread_local std::vector<uint8_t*> dst_buffer;
  const DecodeTables& t = lut_cache().get(blob, call, s.group);
  const uint32_t C = t.channels, rows = std::clamp<uint32_t>(kTileSymbols / C, 1, s.token_count);
  tile_buffer.resize((size_t)rows * C);
  dst_buffer.resize(rows);
  const size_t elem = dtype_size(v.dtype), row_bytes = C * elem;
  const Placement placement = placement_of(v);
  if (placement == Placement::Staged) staged_buffer.resize(rows * row_bytes);
  // Locals: the thread-local vectors' addresses would be looked up again after every call.
  int8_t* const tile = tile_buffer.data();
  uint8_t* const staged = staged_buffer.data();
  uint8_t** const dsts = dst_buffer.data();
  const bool stream = placement == Placement::Heads    ? streams_heads(v)
                      : placement == Placement::Staged ? streams_transposes(v, path)
                                                       : false;
  const RowRuns runs = placement == Placement::Heads
                           ? RowRuns{v.heads, v.head_dim, v.s_head * (int64_t)elem, stream}
                           : RowRuns{1, C, 0};
  RansCursor r(data + s.offset, s.bytes);
  const uint32_t end = s.token_begin + s.token_count;
  // Unfused, a paged output's rows written through the caches go one at a time, `ahead`
  // prefetching the row kPrefetchRows after each (see kPrefetchRows); other rows go a tile per
  // call.
  const bool row_by_row = !stream && v.block_table;
  // A vector path decodes straight into the rows (decode_rows_*): the output's, prefetched a
  // tile at a time first where they are paged and written through the caches, or the staging
  // tile's. rows_fuse means whole rows are whole steps, so every tile starts at lane 0.
  const bool fuse = path != CpuPath::Scalar && rows_fuse(runs);
  const bool prefetch_tile = row_by_row && placement != Placement::Staged;
  RowWalk at(v, s.token_begin, end), ahead(v, row_by_row ? s.token_begin : end, end);
  for (; ahead.token() < std::min(end, s.token_begin + kPrefetchRows); ahead.next())
    prefetch_row(v, ahead.row());
  for (uint32_t k0 = 0, n; k0 < s.token_count; k0 += n) {
    const uint32_t t0 = s.token_begin + k0;
    n = tile_rows(v, t0, k0, s.token_count, rows);
    // Raw rows (the sink) are the group's first tokens, so a tile's are a prefix of it: their
    // symbols (zeros) are decoded and passed over, the rows stored verbatim.
    const uint32_t raw = p.raw_rows > t0 ? std::min(n, p.raw_rows - t0) : 0;
    if (raw) decode_symbols(path, r, t, (size_t)raw * C, tile);
    for (uint32_t k = 0; k < raw; ++k, at.next())
      store_row(v, t0 + k, p.raw.data() + (size_t)(t0 + k) * C);
    const uint32_t m = n - raw, q0 = t0 + raw;  // the tile's quantized rows
    for (uint32_t k = 0; k < m; ++k, at.next())
      dsts[k] = placement == Placement::Staged ? staged + k * row_bytes : at.row();
    const float* a = p.a.data() + q0;
    if (fuse) {
      for (uint32_t k = 0; prefetch_tile && k < m; ++k) prefetch_row(v, dsts[k]);
      on_path(path, decode_rows_scalar, decode_rows_avx2, decode_rows_avx512)(
          r, t, m, {a, p.b.data(), p.o.data(), runs, v.dtype, dsts});
    } else {
      decode_symbols(path, r, t, (size_t)m * C, tile);
      if (!row_by_row) dequantize_tile(path, tile, a, p, m, runs, v.dtype, dsts);
      for (uint32_t k = 0; row_by_row && k < m; ++k) {
        dequantize_tile(path, tile + (size_t)k * C, a + k, p, 1, runs, v.dtype, dsts + k);
        if (ahead.token() < end) {
          prefetch_row(v, ahead.row());
          ahead.next();
        }
      }
    }
    if (placement == Placement::Staged && m)
      store_native_rows(v, q0, m, staged, path == CpuPath::Avx512);
  }
  stream_fence();  // the segment's non-temporal stores, if any, land before it is reported done
  r.finish();
  apply_overflow(p, v, s.token_begin, end);
}

// One segment decoded into its group's output.
void decode_segment_into(const ParsedBlob& blob, const uint8_t* data,
                         const std::vector<TensorView>& outs, uint64_t call, CpuPath path,
                         const Segment& s) {
  thread_local ParamCache params;
  const GroupDesc& d = blob.groups[s.group].desc;
  const uint32_t C = d.channels(), W = d.symbols_per_token();
  // The vector paths fuse decode, dequantization and conversion; the scalar path keeps the
  // separate passes it has always had.
  const bool fused = path != CpuPath::Scalar && d.quantizer != Quantizer::Lossless;
  if (fused)
    return decode_fused(blob, data, call, path, s, params.get(blob, call, s.group), outs[s.group]);
  const int8_t* sym = segment_symbols(blob, data, call, path, s);
  if (d.quantizer == Quantizer::Lossless) {
    std::vector<uint8_t> bits(W);
    for (uint32_t k = 0; k < s.token_count; ++k, sym += W) {
      join_planes(sym, C, d.planes, bits.data());
      store_bits(outs[s.group], s.token_begin + k, bits.data());
    }
    return;
  }
  const DequantParams& p = params.get(blob, call, s.group);
  // Rows go out a tile at a time (a token-adjacent output is written per channel); a tile
  // holds at most 64 rows and 64 KiB, so wide groups do not grow decode memory.
  const uint32_t rows = std::clamp<uint32_t>((1u << 14) / C, 1, 64);
  std::vector<float> tile((size_t)rows * C);
  for (uint32_t k0 = 0; k0 < s.token_count; k0 += rows) {
    const uint32_t n = std::min(rows, s.token_count - k0), t0 = s.token_begin + k0;
    for (uint32_t k = 0; k < n; ++k)
      dequantize_row(sym + (size_t)(k0 + k) * C, p, t0 + k, C, tile.data() + (size_t)k * C);
    store_rows(outs[s.group], t0, n, tile.data());
  }
  apply_overflow(p, outs[s.group], s.token_begin, s.token_begin + s.token_count);
}

}  // namespace

void check_request(const EncodeRequest& req) {
  if (req.groups.empty() || req.groups.size() % 2) throw InputError("need K and V for each layer");
  if (req.groups.size() / 2 > kMaxLayers) throw InputError("too many layers");
  for (size_t i = 0; i < req.groups.size(); ++i) {
    check_spec(req.groups[i], i);
    // Raw rows and lossless groups travel in the blob's dtype: exact only if that is the
    // tensor's own.
    const bool lossless = req.groups[i].quantizer == Quantizer::Lossless;
    if ((req.groups[i].raw_rows || lossless) && req.groups[i].view.dtype != req.dtype)
      throw InputError("raw rows and lossless groups need the KV tensors in the blob's dtype");
  }
}

GroupDesc plan_group(const GroupSpec& s, uint32_t segment_symbols) {
  const TensorView& v = s.view;
  GroupDesc d;
  d.tokens = v.tokens;
  d.heads = (uint16_t)v.heads;
  d.head_dim = (uint16_t)v.head_dim;
  d.planes = s.quantizer == Quantizer::Lossless ? (uint32_t)dtype_size(v.dtype) : 1;
  d.seg_tokens = segment_tokens(segment_symbols, d.symbols_per_token());
  d.num_segments = segment_count(v.tokens, d.seg_tokens);
  d.quantizer = s.quantizer;
  d.param = s.param;
  return d;
}

BlobHeader blob_header(const EncodeRequest& req) {
  BlobHeader h;
  h.num_layers = (uint32_t)(req.groups.size() / 2);
  h.dtype = req.dtype;
  h.layout = req.layout;
  h.level = req.level;
  h.flags = req.flags;
  h.transform = req.transform;
  return h;
}

std::vector<Quantized> quantize(const EncodeRequest& req) {
  check_request(req);
  for (const GroupSpec& s : req.groups)
    if (s.quantizer == Quantizer::Lossless)
      throw InputError("the lossless quantizer has no quantization stage");
  std::vector<Quantized> out(req.groups.size());
  const CpuPath path = cpu_path();
  parallel_for(out.size(), req.threads, [&](size_t i) {
    const TensorView& v = req.groups[i].view;
    out[i].symbols.resize((size_t)v.tokens * v.channels());
    const Group g = fit_group(req.groups[i], req.segment_symbols, path, out[i].symbols.data());
    out[i].params = expand_params(g.quant, v.tokens, v.channels());
  });
  return out;
}

void encode(const EncodeRequest& req, const BlobAllocator& alloc) {
  check_request(req);
  const CpuPath path = cpu_path();
  std::vector<EncodedGroup> groups(req.groups.size());
  parallel_for(groups.size(), req.threads, [&](size_t g) {
    groups[g] = encode_group(req.groups[g], req.segment_symbols, path);
  });
  write_blob(blob_header(req), groups, alloc, req.threads);
  for (EncodedGroup& e : groups) payload_pool().give(e.payload);
}

std::vector<uint8_t> encode(const EncodeRequest& req) {
  std::vector<uint8_t> out;
  encode(req, [&](size_t n) {
    out.resize(n);
    return out.data();
  });
  return out;
}

void decode_into(const ParsedBlob& blob, const uint8_t* data, const std::vector<TensorView>& outs,
                 int threads) {
  check_outputs(blob, outs);
  const uint64_t call = ++g_calls;
  const CpuPath path = cpu_path();
  // A layer's K and V segments of the same tokens go out one after the other: outputs that
  // interleave K and V in a row (FlashAttention and vLLM CPU pages) then have each cache line
  // written twice while it is still in cache. In runs of adjacent ones, so a thread mostly stays
  // in one layer and builds its decoder tables and parameters once, not once per segment.
  std::vector<uint32_t> order(blob.segments.size());
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t x, uint32_t y) {
    const Segment &a = blob.segments[x], &b = blob.segments[y];
    return std::tuple(a.group / 2, a.token_begin, a.group) <
           std::tuple(b.group / 2, b.token_begin, b.group);
  });
  // Runs shrink as the work left does (guided scheduling): long runs first, so a thread
  // rarely changes layer, and short ones last, so the threads finish together.
  const size_t n = order.size(), workers = (size_t)resolve_threads(threads);
  std::vector<size_t> starts{0};
  for (size_t left = n; left;) {
    const size_t run = std::min(left, std::max<size_t>(2, left / (2 * workers)));
    starts.push_back(starts.back() + run);
    left -= run;
  }
  parallel_for(starts.size() - 1, threads, [&](size_t r) {
    for (size_t i = starts[r]; i < starts[r + 1]; ++i)
      decode_segment_into(blob, data, outs, call, path, blob.segments[order[i]]);
  });
}

EntropyStats entropy_stats(const ParsedBlob& blob, const uint8_t* data, int threads) {
  const uint64_t call = ++g_calls;
  const CpuPath path = cpu_path();
  std::vector<double> bits(blob.segments.size(), 0.0);
  parallel_for(blob.segments.size(), threads, [&](size_t i) {
    const Segment& s = blob.segments[i];
    const TableSet& ts = blob.groups[s.group].tables;
    const uint32_t W = blob.groups[s.group].desc.symbols_per_token();
    const int8_t* sym = segment_symbols(blob, data, call, path, s);
    // Counted per table, not per channel: the code length is linear in the counts, and a
    // histogram per channel would cost 1 KiB per channel that a tiny blob can claim by the
    // hundred thousand.
    std::vector<Histogram> hists(ts.tables.size(), Histogram{});
    for (uint32_t t = 0; t < s.token_count; ++t, sym += W)
      for (uint32_t c = 0; c < W; ++c) hists[ts.channel_table[c]][sym[c] + kSymbolBias]++;
    for (size_t t = 0; t < hists.size(); ++t) bits[i] += code_length_bits(hists[t], ts.tables[t]);
  });
  EntropyStats st;
  for (size_t i = 0; i < bits.size(); ++i) {
    const Segment& s = blob.segments[i];
    st.ideal_bits += bits[i];
    st.state_bytes += rans::kStateBytes;
    st.word_bytes += s.bytes - rans::kStateBytes;
    st.symbols += (uint64_t)s.token_count * blob.groups[s.group].desc.symbols_per_token();
  }
  st.side_bytes = blob.segments.empty() ? 0 : blob.segments[0].offset;
  return st;
}

}  // namespace cachegen
