#include "codec.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <string>

#include "parallel.hpp"
#include "segment.hpp"

namespace cachegen {
namespace {

using EncTable = std::array<rans::EncSym, kAlphabet>;

struct FittedGroup {
  Group group;
  std::vector<int8_t> symbols;  // [tokens, channels]
  std::vector<EncTable> enc;
};

void check_spec(const GroupSpec& s, size_t index) {
  const TensorView& v = s.view;
  const std::string where = "group " + std::to_string(index) + ": ";
  if (!v.data) throw InputError(where + "null tensor data");
  if (v.tokens < 1 || v.tokens > kMaxTokens) throw InputError(where + "token count out of range");
  if (v.heads < 1 || v.heads > kMaxHeads) throw InputError(where + "head count out of range");
  if (v.head_dim < 1 || v.head_dim > kMaxHeadDim) throw InputError(where + "head dim out of range");
  if (v.channels() > kMaxChannels) throw InputError(where + "too many channels");
  if (s.max_tables < 1 || s.max_tables > 255) throw InputError(where + "max_tables not in [1, 255]");
}

uint32_t segment_tokens(uint32_t target_symbols, uint32_t channels) {
  const uint32_t cap = kMaxSegmentSymbols / channels;
  return std::clamp<uint32_t>(target_symbols / channels, 1, std::max(cap, 1u));
}

FittedGroup fit_group(const GroupSpec& s, uint32_t segment_symbols) {
  const TensorView& v = s.view;
  const uint32_t T = v.tokens, C = v.channels();
  FittedGroup f;
  GroupDesc& d = f.group.desc;
  d.tokens = T;
  d.heads = (uint16_t)v.heads;
  d.head_dim = (uint16_t)v.head_dim;
  d.seg_tokens = segment_tokens(segment_symbols, C);
  d.num_segments = segment_count(T, d.seg_tokens);
  d.quantizer = s.quantizer;
  d.param = s.param;
  f.group.quant = fit_quantizer(s.quantizer, s.param, v);
  f.symbols.resize((size_t)T * C);
  std::vector<Histogram> hists(C, Histogram{});
  quantize_group(f.group.quant, expand_params(f.group.quant, T, C), v, f.symbols.data(),
                 hists[0].data());
  f.group.tables = fit_tables(hists, s.max_tables);
  for (const Table& t : f.group.tables.tables) f.enc.push_back(encoder_symbols(t));
  return f;
}

void put_u32(uint8_t* p, uint32_t v) { std::memcpy(p, &v, 4); }

// Encode symbols[p] for p in [0, n) backwards; returns states followed by words.
std::vector<uint8_t> encode_segment(const FittedGroup& f, uint32_t token_begin, uint32_t tokens) {
  const uint32_t C = f.group.desc.channels();
  const size_t n = (size_t)tokens * C;
  const int8_t* sym = f.symbols.data() + (size_t)token_begin * C;
  const uint8_t* table_of = f.group.tables.channel_table.data();
  uint32_t state[rans::kLanes];
  std::fill(state, state + rans::kLanes, rans::kLowerBound);
  std::vector<uint16_t> words;
  words.reserve(n / 4 + 16);
  uint32_t c = (uint32_t)((n - 1) % C);
  for (size_t p = n; p-- > 0;) {
    const rans::EncSym es = f.enc[table_of[c]][sym[p] + kSymbolBias];
    uint32_t& x = state[p % rans::kLanes];
    if (rans::enc_needs_flush(x, es)) {
      words.push_back((uint16_t)x);
      x >>= 16;
    }
    x = rans::enc_step(x, es);
    c = c ? c - 1 : C - 1;
  }
  std::vector<uint8_t> out(rans::kStateBytes + words.size() * 2);
  for (uint32_t l = 0; l < rans::kLanes; ++l) put_u32(out.data() + 4 * l, state[l]);
  uint8_t* w = out.data() + rans::kStateBytes;
  for (size_t i = 0; i < words.size(); ++i) std::memcpy(w + 2 * i, &words[words.size() - 1 - i], 2);
  return out;
}

// Decoder tables of one group, built per thread on first use and kept while the thread's
// segments stay in that group (segments of a group are adjacent). One per thread, living across
// calls so its memory is reused; `call` tells calls apart.
class LutCache {
 public:
  const uint32_t* const* get(const ParsedBlob& blob, uint64_t call, uint32_t group) {
    if (call == call_ && group == group_) return by_channel_.data();
    const TableSet& ts = blob.groups[group].tables;
    luts_.resize(ts.tables.size() * rans::kProbScale);
    for (size_t t = 0; t < ts.tables.size(); ++t)
      fill_decoder_lut(ts.tables[t], luts_.data() + t * rans::kProbScale);
    by_channel_.clear();
    for (uint8_t t : ts.channel_table) by_channel_.push_back(luts_.data() + t * rans::kProbScale);
    call_ = call;
    group_ = group;
    return by_channel_.data();
  }

 private:
  uint64_t call_ = 0;
  uint32_t group_ = 0;
  std::vector<uint32_t> luts_;
  std::vector<const uint32_t*> by_channel_;
};

void check_outputs(const ParsedBlob& blob, const std::vector<TensorView>& outs) {
  if (outs.size() != blob.groups.size()) throw InputError("need one output per (layer, K/V)");
  for (size_t g = 0; g < outs.size(); ++g) {
    const GroupDesc& d = blob.groups[g].desc;
    const TensorView& v = outs[g];
    if (!v.data || v.tokens != d.tokens || v.heads != d.heads || v.head_dim != d.head_dim)
      throw InputError("output " + std::to_string(g) + " has the wrong shape");
  }
}

// Decode a segment's symbols into a per-thread scratch buffer.
std::atomic<uint64_t> g_calls{0};

const int8_t* segment_symbols(const ParsedBlob& blob, const uint8_t* data, uint64_t call,
                              const Segment& s) {
  thread_local LutCache luts;
  thread_local std::vector<int8_t> scratch;
  const uint32_t C = blob.groups[s.group].desc.channels();
  scratch.resize((size_t)s.token_count * C);
  decode_segment(data + s.offset, s.bytes, s.token_count, C, luts.get(blob, call, s.group),
                 scratch.data());
  return scratch.data();
}

std::vector<FittedGroup> fit_groups(const EncodeRequest& req) {
  if (req.groups.empty() || req.groups.size() % 2) throw InputError("need K and V for each layer");
  if (req.groups.size() / 2 > kMaxLayers) throw InputError("too many layers");
  for (size_t i = 0; i < req.groups.size(); ++i) check_spec(req.groups[i], i);
  std::vector<FittedGroup> fitted(req.groups.size());
  parallel_for(fitted.size(), req.threads,
               [&](size_t g) { fitted[g] = fit_group(req.groups[g], req.segment_symbols); });
  return fitted;
}

}  // namespace

std::vector<Quantized> quantize(const EncodeRequest& req) {
  std::vector<FittedGroup> fitted = fit_groups(req);
  std::vector<Quantized> out;
  for (FittedGroup& f : fitted) {
    const GroupDesc& d = f.group.desc;
    out.push_back({std::move(f.symbols), expand_params(f.group.quant, d.tokens, d.channels())});
  }
  return out;
}

std::vector<uint8_t> encode(const EncodeRequest& req) {
  std::vector<FittedGroup> fitted = fit_groups(req);

  std::vector<Group> groups;
  std::vector<std::pair<uint32_t, uint32_t>> seg_ref;  // (group, segment within group)
  for (uint32_t g = 0; g < fitted.size(); ++g) {
    fitted[g].group.desc.first_segment = (uint32_t)seg_ref.size();
    for (uint32_t s = 0; s < fitted[g].group.desc.num_segments; ++s) seg_ref.push_back({g, s});
    groups.push_back(fitted[g].group);
  }
  std::vector<std::vector<uint8_t>> segments(seg_ref.size());
  parallel_for(segments.size(), req.threads, [&](size_t i) {
    const FittedGroup& f = fitted[seg_ref[i].first];
    const uint32_t t0 = seg_ref[i].second * f.group.desc.seg_tokens;
    segments[i] = encode_segment(f, t0, std::min(f.group.desc.seg_tokens, f.group.desc.tokens - t0));
  });
  BlobHeader h;
  h.num_layers = (uint32_t)(req.groups.size() / 2);
  h.dtype = req.dtype;
  h.layout = req.layout;
  h.level = req.level;
  h.flags = req.flags;
  h.num_segments = (uint32_t)segments.size();
  return write_blob(h, groups, segments);
}

void decode_into(const ParsedBlob& blob, const uint8_t* data, const std::vector<TensorView>& outs,
                 int threads) {
  check_outputs(blob, outs);
  const uint64_t call = ++g_calls;
  std::vector<DequantParams> params(blob.groups.size());
  for (size_t g = 0; g < params.size(); ++g) {
    const GroupDesc& d = blob.groups[g].desc;
    params[g] = expand_params(blob.groups[g].quant, d.tokens, d.channels());
  }
  parallel_for(blob.segments.size(), threads, [&](size_t i) {
    const Segment& s = blob.segments[i];
    const uint32_t C = blob.groups[s.group].desc.channels();
    const int8_t* sym = segment_symbols(blob, data, call, s);
    std::vector<float> row(C);
    for (uint32_t k = 0; k < s.token_count; ++k) {
      dequantize_row(sym + (size_t)k * C, params[s.group], s.token_begin + k, C, row.data());
      store_row(outs[s.group], s.token_begin + k, row.data());
    }
  });
}

EntropyStats entropy_stats(const ParsedBlob& blob, const uint8_t* data, int threads) {
  const uint64_t call = ++g_calls;
  std::vector<double> bits(blob.segments.size(), 0.0);
  parallel_for(blob.segments.size(), threads, [&](size_t i) {
    const Segment& s = blob.segments[i];
    const Group& g = blob.groups[s.group];
    const uint32_t C = g.desc.channels();
    std::vector<std::array<double, kAlphabet>> cost(g.tables.tables.size());
    for (size_t t = 0; t < cost.size(); ++t)
      for (int k = 0; k < kAlphabet; ++k) {
        const double f = g.tables.tables[t].freq[k];
        cost[t][k] = f > 0 ? -std::log2(f / rans::kProbScale) : 0.0;
      }
    const int8_t* sym = segment_symbols(blob, data, call, s);
    const size_t n = (size_t)s.token_count * C;
    for (size_t p = 0; p < n; ++p)
      bits[i] += cost[g.tables.channel_table[p % C]][sym[p] + kSymbolBias];
  });
  EntropyStats st;
  for (size_t i = 0; i < bits.size(); ++i) {
    const Segment& s = blob.segments[i];
    st.ideal_bits += bits[i];
    st.state_bytes += rans::kStateBytes;
    st.word_bytes += s.bytes - rans::kStateBytes;
    st.symbols += (uint64_t)s.token_count * blob.groups[s.group].desc.channels();
  }
  st.side_bytes = blob.segments.empty() ? 0 : blob.segments[0].offset;
  return st;
}

}  // namespace cachegen
