#include "codec.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "half.hpp"
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
  {
    std::vector<float> x((size_t)T * C);
    load_f32(v, x.data());
    f.group.quant = fit_quantizer(s.quantizer, s.param, x.data(), T, C);
    f.symbols.resize(x.size());
    quantize_group(f.group.quant, expand_params(f.group.quant, T, C), x.data(), T, C,
                   f.symbols.data());
  }
  f.group.tables = fit_tables(channel_histograms(f.symbols.data(), T, C), s.max_tables);
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

// Decoder tables of one group: one LUT per table and a LUT pointer per channel.
struct GroupLuts {
  std::vector<std::vector<uint32_t>> luts;
  std::vector<const uint32_t*> by_channel;
};

std::vector<GroupLuts> build_luts(const ParsedBlob& blob, int threads) {
  std::vector<GroupLuts> out(blob.groups.size());
  parallel_for(blob.groups.size(), threads, [&](size_t g) {
    const TableSet& ts = blob.groups[g].tables;
    for (const Table& t : ts.tables) out[g].luts.push_back(decoder_lut(t));
    for (uint8_t t : ts.channel_table) out[g].by_channel.push_back(out[g].luts[t].data());
  });
  return out;
}

template <typename Out, Out (*Convert)(float)>
struct WriteSink {
  const float *a, *b, *o;
  Out* base;
  int64_t s_token;
  const int64_t* channel_offset;
  void operator()(uint32_t t, uint32_t c, int s) const {
    base[t * s_token + channel_offset[c]] = Convert(dequantize(s, a[t], b[c], o[c]));
  }
};

float identity(float x) { return x; }

std::vector<int64_t> channel_offsets(const TensorView& v) {
  std::vector<int64_t> off(v.channels());
  for (uint32_t h = 0; h < v.heads; ++h)
    for (uint32_t d = 0; d < v.head_dim; ++d) off[h * v.head_dim + d] = h * v.s_head + d * v.s_dim;
  return off;
}

void check_outputs(const ParsedBlob& blob, const std::vector<TensorView>& outs) {
  if (outs.size() != blob.groups.size()) throw InputError("need one output per (layer, K/V)");
  for (size_t g = 0; g < outs.size(); ++g) {
    const GroupDesc& d = blob.groups[g].desc;
    const TensorView& v = outs[g];
    if (!v.data || v.tokens != d.tokens || v.heads != d.heads || v.head_dim != d.head_dim)
      throw InputError("output " + std::to_string(g) + " has the wrong shape");
  }
}

struct GroupOutput {
  DequantParams params;
  std::vector<int64_t> channel_offset;
};

template <typename Out, Out (*Convert)(float)>
void decode_to(const ParsedBlob& blob, const uint8_t* data, const Segment& s, const GroupLuts& l,
               const GroupOutput& go, const TensorView& v) {
  WriteSink<Out, Convert> sink{go.params.a.data(), go.params.b.data(), go.params.o.data(),
                               static_cast<Out*>(v.data), v.s_token, go.channel_offset.data()};
  decode_segment(data + s.offset, s.bytes, s.token_begin, s.token_count,
                 blob.groups[s.group].desc.channels(), l.by_channel.data(), sink);
}

}  // namespace

std::vector<uint8_t> encode(const EncodeRequest& req) {
  if (req.groups.empty() || req.groups.size() % 2) throw InputError("need K and V for each layer");
  if (req.groups.size() / 2 > kMaxLayers) throw InputError("too many layers");
  for (size_t i = 0; i < req.groups.size(); ++i) check_spec(req.groups[i], i);
  std::vector<FittedGroup> fitted(req.groups.size());
  parallel_for(fitted.size(), req.threads,
               [&](size_t g) { fitted[g] = fit_group(req.groups[g], req.segment_symbols); });

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
  const std::vector<GroupLuts> luts = build_luts(blob, threads);
  std::vector<GroupOutput> go(blob.groups.size());
  for (size_t g = 0; g < go.size(); ++g) {
    const GroupDesc& d = blob.groups[g].desc;
    go[g] = {expand_params(blob.groups[g].quant, d.tokens, d.channels()), channel_offsets(outs[g])};
  }
  parallel_for(blob.segments.size(), threads, [&](size_t i) {
    const Segment& s = blob.segments[i];
    const TensorView& v = outs[s.group];
    switch (v.dtype) {
      case DType::F16:
        return decode_to<uint16_t, f32_to_f16>(blob, data, s, luts[s.group], go[s.group], v);
      case DType::BF16:
        return decode_to<uint16_t, f32_to_bf16>(blob, data, s, luts[s.group], go[s.group], v);
      case DType::F32:
        return decode_to<float, identity>(blob, data, s, luts[s.group], go[s.group], v);
    }
  });
}

EntropyStats entropy_stats(const ParsedBlob& blob, const uint8_t* data, int threads) {
  const std::vector<GroupLuts> luts = build_luts(blob, threads);
  std::vector<double> bits(blob.segments.size(), 0.0);
  parallel_for(blob.segments.size(), threads, [&](size_t i) {
    const Segment& s = blob.segments[i];
    const Group& g = blob.groups[s.group];
    std::vector<std::array<double, kAlphabet>> cost(g.tables.tables.size());
    for (size_t t = 0; t < cost.size(); ++t)
      for (int k = 0; k < kAlphabet; ++k) {
        const double f = g.tables.tables[t].freq[k];
        cost[t][k] = f > 0 ? -std::log2(f / rans::kProbScale) : 0.0;
      }
    const uint8_t* table_of = g.tables.channel_table.data();
    double acc = 0.0;
    auto sink = [&](uint32_t, uint32_t c, int sym) { acc += cost[table_of[c]][sym + kSymbolBias]; };
    decode_segment(data + s.offset, s.bytes, s.token_begin, s.token_count, g.desc.channels(),
                   luts[s.group].by_channel.data(), sink);
    bits[i] = acc;
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
