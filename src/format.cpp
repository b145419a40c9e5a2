#include "format.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <exception>
#include <string>

#include "bits.hpp"
#include "crc32c.hpp"
#include "parallel.hpp"
#include "step_codes.hpp"

namespace cachegen {
namespace {

// Appends to a vector, or fills preallocated memory (the blob itself).
class Writer {
 public:
  explicit Writer(std::vector<uint8_t>& out) : vec_(&out) {}
  explicit Writer(uint8_t* out, size_t pos = 0) : ptr_(out), pos_(pos) {}
  template <typename T>
  void put(T v) {
    bytes(&v, sizeof(T));  // little-endian hosts only (checked in CMake)
  }
  void bytes(const void* p, size_t n) {
    auto* b = static_cast<const uint8_t*>(p);
    if (vec_) {
      vec_->insert(vec_->end(), b, b + n);
    } else if (n) {
      std::memcpy(ptr_ + pos_, b, n);
    }
    pos_ += n;
  }
  void varint(uint32_t v) {  // LEB128
    for (; v >= 0x80; v >>= 7) put((uint8_t)(v | 0x80));
    put((uint8_t)v);
  }
  void zeros_to(size_t offset) {
    static const uint8_t kZeros[8] = {};
    while (pos_ < offset) bytes(kZeros, std::min<size_t>(8, offset - pos_));
  }
  size_t pos() const { return pos_; }

 private:
  std::vector<uint8_t>* vec_ = nullptr;
  uint8_t* ptr_ = nullptr;
  size_t pos_ = 0;
};

class Reader {
 public:
  Reader(const uint8_t* data, size_t pos, size_t end) : d_(data), pos_(pos), end_(end) {}
  template <typename T>
  T get(const char* what) {
    need(sizeof(T), what);
    T v;
    std::memcpy(&v, d_ + pos_, sizeof(T));
    pos_ += sizeof(T);
    return v;
  }
  uint32_t varint(const char* what) { return read_varint(d_, pos_, end_, 5, what); }
  std::vector<uint16_t> u16s(size_t n, const char* what) {
    need(n * 2, what);
    std::vector<uint16_t> v(n);
    std::memcpy(v.data(), d_ + pos_, n * 2);
    pos_ += n * 2;
    return v;
  }
  std::vector<uint8_t> u8s(size_t n, const char* what) {
    need(n, what);
    std::vector<uint8_t> v(d_ + pos_, d_ + pos_ + n);
    pos_ += n;
    return v;
  }
  size_t& pos() { return pos_; }
  size_t end() const { return end_; }
  const uint8_t* data() const { return d_; }

 private:
  void need(size_t n, const char* what) {
    if (end_ - pos_ < n) throw FormatError(std::string("truncated ") + what);
  }
  const uint8_t* d_;
  size_t pos_, end_;
};

bool readable_version(uint16_t v) { return v >= 1 && v <= kFormatVersion; }

uint64_t align8(uint64_t x) { return (x + 7) & ~uint64_t{7}; }

[[noreturn]] void fail(const std::string& msg) { throw FormatError(msg); }

// What parsing may allocate: kMetaPerBlobByte bytes per blob byte plus a fixed allowance. Fields
// whose metadata the blob does not pay for in bytes (a channel map entry per channel even with a
// single table, a 512-byte table from a few bytes of code) are refused before allocation, so a
// small blob cannot claim gigabytes of channels. Real blobs stay far below (their payload pays).
constexpr uint64_t kMetaPerBlobByte = 16;
constexpr uint64_t kMetaAllowance = uint64_t{4} << 20;

class MetaBudget {
 public:
  explicit MetaBudget(size_t blob_bytes) : left_(kMetaPerBlobByte * blob_bytes + kMetaAllowance) {}
  void charge(uint64_t bytes) {
    if (bytes > left_) fail("blob describes more metadata than its size accounts for");
    left_ -= bytes;
  }

 private:
  uint64_t left_;
};

void write_scales(const std::vector<uint16_t>& scales, bool coded, Writer& w,
                  std::vector<uint8_t>& out) {
  if (coded)
    write_step_codes(scales, out);
  else
    w.bytes(scales.data(), scales.size() * 2);
}

std::vector<uint8_t> read_table_map(Reader& r, uint32_t channels, int num_tables, bool packed) {
  if (!packed) return r.u8s(channels, "channel table map");
  const int b = table_map_bits((size_t)num_tables);
  const size_t bytes = ((size_t)channels * b + 7) / 8;
  if (bytes > r.end() - r.pos()) fail("truncated channel table map");
  BitReader br(r.data(), r.pos(), std::min(r.end(), r.pos() + bytes), "channel table map");
  std::vector<uint8_t> map(channels);
  for (uint8_t& t : map) t = (uint8_t)br.take(b);
  r.pos() += bytes;
  return map;
}

// Raw rows as a dense [rows, channels] view of `data` in `dtype`.
TensorView raw_view(void* data, DType dtype, uint32_t rows, uint32_t channels) {
  return {data, dtype, rows, 1, channels, (int64_t)channels, (int64_t)channels, 1};
}

// The raw rows in the blob's dtype: exact, the values having come from that dtype.
void write_raw_rows(const GroupQuant& q, uint32_t channels, DType dtype, Writer& w) {
  std::vector<uint8_t> bytes((size_t)q.raw_rows * channels * dtype_size(dtype));
  const TensorView v = raw_view(bytes.data(), dtype, q.raw_rows, channels);
  for (uint32_t t = 0; t < q.raw_rows; ++t) store_row(v, t, q.raw.data() + (size_t)t * channels);
  w.put(q.raw_rows);
  w.bytes(bytes.data(), bytes.size());
}

// Overflow list: a count, then per entry (ascending by token, then channel) three varints: the
// token's distance from the previous entry's; the channel (for a second entry of a token, its
// distance from the previous channel, less 1); the symbol's magnitude beyond max_symbol, less
// 1, times 2, plus 1 if it is negative. Three bytes an entry on real KV.
constexpr size_t kMinOverflowEntryBytes = 3;

void write_overflow(const GroupQuant& q, Writer& w) {
  w.put((uint32_t)q.overflow.size());
  uint32_t token = 0, channel = 0;
  for (size_t i = 0; i < q.overflow.size(); ++i) {
    const Overflow& e = q.overflow[i];
    const bool same = i > 0 && e.token == token;
    w.varint(e.token - token);
    w.varint(same ? e.channel - channel - 1 : e.channel);
    const uint32_t magnitude = (uint32_t)(e.symbol < 0 ? -e.symbol : e.symbol);
    w.varint((magnitude - q.max_symbol - 1) << 1 | (e.symbol < 0));
    token = e.token;
    channel = e.channel;
  }
}

void write_side(const Group& g, DType dtype, Writer& w, std::vector<uint8_t>& out) {
  const GroupQuant& q = g.quant;
  if (q.flags & kTokenScale) write_scales(q.token_scale, q.flags & kTokenCodes, w, out);
  if (q.flags & kChannelScale) write_scales(q.channel_scale, q.flags & kChannelCodes, w, out);
  if (q.flags & kChannelOffset) w.bytes(q.channel_offset.data(), q.channel_offset.size() * 2);
  if (q.flags & kRawRows) write_raw_rows(q, g.desc.channels(), dtype, w);
  if (q.flags & kOverflow) write_overflow(q, w);
  serialize_tables(g.tables, out);
}

std::vector<uint8_t> side_bytes(const Group& g, DType dtype) {
  std::vector<uint8_t> out;
  Writer w(out);
  write_side(g, dtype, w, out);
  return out;
}

void write_desc(const Group& g, uint32_t side_len, uint64_t side_off, Writer& w) {
  const GroupDesc& d = g.desc;
  w.put(d.tokens);
  w.put(d.heads);
  w.put(d.head_dim);
  w.put(d.seg_tokens);
  w.put((uint8_t)d.quantizer);
  w.put(g.quant.flags);
  w.put((uint8_t)g.tables.tables.size());
  w.put(g.quant.max_symbol);
  w.put(d.param);
  w.put(side_len);
  w.put(side_off);
  w.put(d.first_segment);
  w.put(d.num_segments);
}

struct DescFields {
  GroupDesc desc;
  uint8_t flags, num_tables, max_symbol;
  uint32_t side_len;
  uint64_t side_off;
};

DescFields read_desc(Reader& r) {
  DescFields f;
  GroupDesc& d = f.desc;
  d.tokens = r.get<uint32_t>("group descriptor");
  d.heads = r.get<uint16_t>("group descriptor");
  d.head_dim = r.get<uint16_t>("group descriptor");
  d.seg_tokens = r.get<uint32_t>("group descriptor");
  uint8_t quantizer = r.get<uint8_t>("group descriptor");
  f.flags = r.get<uint8_t>("group descriptor");
  f.num_tables = r.get<uint8_t>("group descriptor");
  f.max_symbol = r.get<uint8_t>("group descriptor");
  d.param = r.get<float>("group descriptor");
  f.side_len = r.get<uint32_t>("group descriptor");
  f.side_off = r.get<uint64_t>("group descriptor");
  d.first_segment = r.get<uint32_t>("group descriptor");
  d.num_segments = r.get<uint32_t>("group descriptor");
  if (!valid_quantizer(quantizer)) fail("unknown quantizer id " + std::to_string(quantizer));
  d.quantizer = (Quantizer)quantizer;
  return f;
}

void check_desc(const DescFields& f, uint32_t expected_first, uint16_t version) {
  const GroupDesc& d = f.desc;
  if (d.tokens < 1 || d.tokens > kMaxTokens) fail("group token count out of range");
  if (d.heads < 1 || d.heads > kMaxHeads) fail("group head count out of range");
  if (d.head_dim < 1 || d.head_dim > kMaxHeadDim) fail("group head dim out of range");
  if (d.channels() > kMaxChannels) fail("group channel count out of range");
  if (d.seg_tokens < 1 || (uint64_t)d.seg_tokens * d.symbols_per_token() > kMaxSegmentSymbols)
    fail("segment length out of range");
  if (d.num_segments != segment_count(d.tokens, d.seg_tokens)) fail("segment count mismatch");
  if (d.first_segment != expected_first) fail("segment numbering mismatch");
  if (f.flags & ~(kTokenScale | kChannelScale | kChannelOffset | kTokenCodes | kChannelCodes |
                  kRawRows | kOverflow))
    fail("unknown quantizer flags");
  if ((f.flags & kOverflow) && version < kOverflowVersion)
    fail("overflow list in a version " + std::to_string(version) + " blob");
  if ((f.flags & kOverflow) && !(f.flags & kTokenScale)) fail("overflow list without token scales");
  const bool token_codes = f.flags & kTokenCodes, channel_codes = f.flags & kChannelCodes;
  if ((token_codes || channel_codes) && version < 2) fail("scale codes in a version 1 blob");
  if ((f.flags & kRawRows) && version < 3)
    fail("raw rows in a version " + std::to_string(version) + " blob");
  if ((f.flags & kRawRows) && !(f.flags & kTokenScale)) fail("raw rows without token scales");
  if ((token_codes && !(f.flags & kTokenScale)) || (channel_codes && !(f.flags & kChannelScale)))
    fail("scale codes without the scales they code");
  if (f.num_tables < 1) fail("group has no probability table");
  if (f.max_symbol < 1 || f.max_symbol > kMaxSymbol) fail("max symbol out of range");
  if (!std::isfinite(d.param)) fail("quantizer parameter is not finite");
  if (d.quantizer == Quantizer::Lossless && version < 4)
    fail("lossless group in a version " + std::to_string(version) + " blob");
  if (d.quantizer == Quantizer::Lossless && f.flags) fail("lossless group with quantizer flags");
}

// What parse_side keeps for a group beyond its Group struct, raw rows aside (those are paid for
// byte by byte).
uint64_t group_meta_bytes(const DescFields& f) {
  const uint64_t C = f.desc.channels(), T = f.desc.tokens;
  uint64_t n = f.desc.symbols_per_token() + (uint64_t)f.num_tables * sizeof(Table);
  if (f.flags & kTokenScale) n += 2 * T;
  if (f.flags & kChannelScale) n += 2 * C;
  if (f.flags & kChannelOffset) n += 2 * C;
  return n;
}

// An Inf or NaN scale, offset or verbatim value would spread into every value it touches.
void check_finite_f16(const std::vector<uint16_t>& v, const char* what) {
  for (uint16_t x : v)
    if ((x & 0x7c00u) == 0x7c00u) fail(std::string(what) + " are not finite");
}

// Raw rows: a count in [1, tokens], then the rows in the blob's dtype (size checked against the
// side data before anything is allocated), widened to fp32.
void read_raw_rows(Reader& r, const GroupDesc& d, DType dtype, GroupQuant& q) {
  q.raw_rows = r.get<uint32_t>("raw rows");
  if (q.raw_rows < 1 || q.raw_rows > d.tokens) fail("raw row count out of range");
  const uint32_t C = d.channels();
  std::vector<uint8_t> bytes = r.u8s((size_t)q.raw_rows * C * dtype_size(dtype), "raw rows");
  const TensorView v = raw_view(bytes.data(), dtype, q.raw_rows, C);
  q.raw.resize((size_t)q.raw_rows * C);
  for (uint32_t t = 0; t < q.raw_rows; ++t) load_row(v, t, q.raw.data() + (size_t)t * C);
  for (float x : q.raw)
    if (!std::isfinite(x)) fail("raw rows are not finite");
}

// Overflow list: a count in [1, quantized elements] whose entries (at least 3 bytes each) the
// side data can hold, each at a quantized row's channel, beyond +-max_symbol and within
// +-kMaxOverflowSymbol; ascending by construction.
void read_overflow(Reader& r, const GroupDesc& d, GroupQuant& q) {
  const uint32_t n = r.get<uint32_t>("overflow count");
  const uint64_t elements = (uint64_t)(d.tokens - q.raw_rows) * d.channels();
  if (n < 1 || n > elements) fail("overflow count out of range");
  if ((uint64_t)n * kMinOverflowEntryBytes > r.end() - r.pos()) fail("truncated overflow list");
  q.overflow.resize(n);
  uint64_t token = 0, channel = 0;
  for (uint32_t i = 0; i < n; ++i) {
    const uint32_t gap = r.varint("overflow list");
    const uint32_t at = r.varint("overflow list");
    const uint32_t value = r.varint("overflow list");
    channel = i > 0 && gap == 0 ? channel + 1 + at : at;
    token += gap;
    const uint64_t magnitude = (uint64_t)(value >> 1) + q.max_symbol + 1;
    if (token < q.raw_rows || token >= d.tokens || channel >= d.channels())
      fail("overflow entry out of range");
    if (magnitude > kMaxOverflowSymbol) fail("overflow symbol out of range");
    q.overflow[i] = {(uint32_t)token, (uint32_t)channel,
                     (int32_t)(value & 1 ? -(int64_t)magnitude : (int64_t)magnitude)};
  }
}

Group parse_side(const DescFields& f, uint16_t version, DType dtype, const uint8_t* data,
                 size_t begin, size_t end) {
  Group g;
  g.desc = f.desc;
  const uint32_t C = f.desc.channels(), W = f.desc.symbols_per_token();
  const bool lossless = f.desc.quantizer == Quantizer::Lossless;
  Reader r(data, begin, end);
  g.quant.flags = f.flags;
  g.quant.max_symbol = f.max_symbol;
  auto scales = [&](uint32_t n, bool coded, const char* what) {
    return coded ? read_step_codes(data, r.pos(), end, n) : r.u16s(n, what);
  };
  if (f.flags & kTokenScale)
    g.quant.token_scale = scales(f.desc.tokens, f.flags & kTokenCodes, "token scales");
  if (f.flags & kChannelScale)
    g.quant.channel_scale = scales(C, f.flags & kChannelCodes, "channel scales");
  if (f.flags & kChannelOffset) g.quant.channel_offset = r.u16s(C, "channel offsets");
  check_finite_f16(g.quant.token_scale, "token scales");
  check_finite_f16(g.quant.channel_scale, "channel scales");
  check_finite_f16(g.quant.channel_offset, "channel offsets");
  if (f.flags & kRawRows) read_raw_rows(r, f.desc, dtype, g.quant);
  if (f.flags & kOverflow) read_overflow(r, f.desc, g.quant);
  if (f.num_tables > 1) {
    g.tables.channel_table = read_table_map(r, W, f.num_tables, version >= 3);
    for (uint8_t t : g.tables.channel_table)
      if (t >= f.num_tables) fail("channel refers to a missing table");
  } else {
    g.tables.channel_table.assign(W, 0);
  }
  g.tables.tables.reserve(f.num_tables);
  for (int t = 0; t < f.num_tables; ++t)
    g.tables.tables.push_back(parse_table(data, r.pos(), end, version >= 3, lossless));
  if (r.pos() != end) fail("group side data has trailing bytes");
  return g;
}

// Every group's side data, in parallel where there is enough of it (scale codes are read bit by
// bit: ~5 ms for a 32-layer, 8K-token blob on one core). The first group's error in group order
// is the one reported, whichever thread meets it first.
void parse_sides(const std::vector<DescFields>& descs, uint16_t version, DType dtype,
                 const uint8_t* data, uint64_t side_bytes, std::vector<Group>& groups) {
  constexpr uint64_t kParallelBytes = 64u << 10;
  groups.resize(descs.size());
  std::vector<std::exception_ptr> errors(descs.size());
  parallel_for(descs.size(), side_bytes >= kParallelBytes ? 0 : 1, [&](size_t i) {
    const DescFields& f = descs[i];
    try {
      groups[i] = parse_side(f, version, dtype, data, f.side_off, f.side_off + f.side_len);
    } catch (...) {
      errors[i] = std::current_exception();
    }
  });
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
}

// The header's fields at their places (header_layout.hpp), then the transform record if any.
void write_header(const BlobHeader& h, bool overflow, uint64_t total, uint64_t side_off,
                  uint64_t index_off, uint64_t payload_off, uint8_t* out) {
  std::memcpy(out + field::Magic::at, kMagic, sizeof(kMagic));
  put<field::Version>(out, written_version(h.flags, overflow));
  put<field::HeaderBytes>(out, (uint16_t)header_bytes(h.flags));
  put<field::TotalBytes>(out, total);
  put<field::NumLayers>(out, h.num_layers);
  put<field::DType>(out, (uint8_t)h.dtype);
  put<field::Layout>(out, (uint8_t)h.layout);
  put<field::Level>(out, h.level);
  put<field::Codec>(out, h.codec);
  put<field::NumSegments>(out, h.num_segments);
  put<field::Flags>(out, h.flags);
  put<field::SideOffset>(out, side_off);
  put<field::IndexOffset>(out, index_off);
  put<field::PayloadOffset>(out, payload_off);
  put<field::Reserved>(out, 0);
  if (!(h.flags & kFlagTransform)) return;
  put<field::TransformDigest>(out, h.transform.digest);
  put<field::TransformPosition>(out, h.transform.position);
}

}  // namespace

uint32_t segment_count(uint32_t tokens, uint32_t seg_tokens) {
  return (uint32_t)(((uint64_t)tokens + seg_tokens - 1) / seg_tokens);
}

std::vector<uint8_t> blob_head(BlobHeader h, std::vector<EncodedGroup>& groups, int threads,
                               uint64_t payload) {
  // Side data in parallel for long caches: each token's scale code costs tens of ns (the codes
  // of a 32-layer, 8K-token cache: ~30 ms on one core).
  constexpr uint64_t kParallelTokens = 1u << 16;
  uint64_t tokens = 0;
  for (const EncodedGroup& e : groups) tokens += e.group.desc.tokens;
  std::vector<std::vector<uint8_t>> sides(groups.size());
  parallel_for(groups.size(), tokens >= kParallelTokens ? threads : 1,
               [&](size_t i) { sides[i] = side_bytes(groups[i].group, h.dtype); });
  uint64_t side_total = 0;
  uint32_t segments = 0;
  for (size_t i = 0; i < groups.size(); ++i) {
    side_total += sides[i].size();
    groups[i].group.desc.first_segment = segments;
    segments += (uint32_t)groups[i].segment_bytes.size();
  }
  h.num_segments = segments;
  const uint64_t side_off = header_bytes(h.flags) + (uint64_t)groups.size() * kGroupDescBytes;
  const uint64_t index_off = align8(side_off + side_total);
  const uint64_t payload_off = align8(index_off + 4ull * segments);
  const uint64_t total = payload_off + payload + 4;

  std::vector<uint8_t> out(payload_off);
  const bool overflow = std::any_of(groups.begin(), groups.end(), [](const EncodedGroup& e) {
    return (e.group.quant.flags & kOverflow) != 0;
  });
  write_header(h, overflow, total, side_off, index_off, payload_off, out.data());
  Writer w(out.data(), header_bytes(h.flags));
  uint64_t off = side_off;
  for (size_t i = 0; i < groups.size(); ++i) {
    write_desc(groups[i].group, (uint32_t)sides[i].size(), off, w);
    off += sides[i].size();
  }
  for (auto& s : sides) w.bytes(s.data(), s.size());
  w.zeros_to(index_off);
  for (const EncodedGroup& e : groups)
    for (uint32_t bytes : e.segment_bytes) w.put(bytes);
  w.zeros_to(payload_off);
  return out;
}

void write_blob(BlobHeader h, std::vector<EncodedGroup>& groups, const BlobAllocator& alloc,
                int threads) {
  uint64_t payload = 0;
  for (const EncodedGroup& e : groups) payload += e.payload.size();
  const std::vector<uint8_t> head = blob_head(h, groups, threads, payload);
  uint8_t* out = alloc(head.size() + payload + 4);
  std::memcpy(out, head.data(), head.size());
  // Payloads are copied in parallel: a fresh blob's pages fault in as they are first written,
  // which costs more than the copy itself.
  std::vector<uint64_t> at(groups.size() + 1, head.size());
  for (size_t i = 0; i < groups.size(); ++i) at[i + 1] = at[i] + groups[i].payload.size();
  parallel_for(groups.size(), threads, [&](size_t i) {
    Writer(out, at[i]).bytes(groups[i].payload.data(), groups[i].payload.size());
  });
  Writer(out, at.back()).put(crc32c(out, at.back()));
}

void verify_checksum(const uint8_t* data, size_t size) {
  if (size < 4) fail("blob too short to be a cachegen blob");
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data + size - 4, 4);
  if (crc32c(data, size - 4) != stored_crc) fail("checksum mismatch: blob is corrupted");
}

namespace {
ParsedBlob parse_checked(const uint8_t* data, size_t size, bool verify);
}  // namespace

ParsedBlob parse_blob(const uint8_t* data, size_t size, bool verify) {
  if (verify) return parse_checked(data, size, true);
  try {
    return parse_checked(data, size, false);
  } catch (const FormatError&) {
    // What a verifying parse reports first: a bad checksum, once the length has been checked.
    if (size >= kHeaderBytes + 4 && std::memcmp(data, kMagic, 4) == 0) {
      const uint32_t flags = get<field::Flags>(data);
      if (readable_version(get<field::Version>(data)) &&
          get<field::HeaderBytes>(data) == header_bytes(flags & kKnownFlags) &&
          get<field::TotalBytes>(data) == size)
        verify_checksum(data, size);
    }
    throw;
  }
}

namespace {
ParsedBlob parse_checked(const uint8_t* data, size_t size, bool verify) {
  if (size < kHeaderBytes + 4) fail("blob too short to be a cachegen blob");
  if (std::memcmp(data, kMagic, 4) != 0) fail("not a cachegen blob (bad magic)");
  const uint16_t version = get<field::Version>(data);
  if (!readable_version(version))
    fail("unsupported format version " + std::to_string(version) + " (this build reads 1 to " +
         std::to_string(kFormatVersion) + ")");
  const uint32_t head = header_bytes(get<field::Flags>(data) & kKnownFlags);
  if (get<field::HeaderBytes>(data) != head) fail("bad header size");
  if (get<field::TotalBytes>(data) != size) fail("blob length does not match header (truncated?)");
  if (size < head + 4) fail("blob too short to be a cachegen blob");
  ParsedBlob b;
  b.header.version = version;
  uint32_t stored_crc;
  std::memcpy(&stored_crc, data + size - 4, 4);
  if (verify && crc32c(data, size - 4) != stored_crc) fail("checksum mismatch: blob is corrupted");
  b.checksum = stored_crc;
  b.checksum_verified = verify;

  BlobHeader& h = b.header;
  h.num_layers = get<field::NumLayers>(data);
  const uint8_t dtype = get<field::DType>(data), layout = get<field::Layout>(data);
  h.level = get<field::Level>(data);
  h.codec = get<field::Codec>(data);
  h.num_segments = get<field::NumSegments>(data);
  h.flags = get<field::Flags>(data);
  if (h.flags & ~kKnownFlags) fail("unknown header flags");
  if (h.flags & kFlagTransform) {
    if (version < kTransformVersion)
      fail("transform record in a version " + std::to_string(version) + " blob");
    h.transform = {get<field::TransformDigest>(data), get<field::TransformPosition>(data)};
  }
  const uint64_t side_off = get<field::SideOffset>(data);
  const uint64_t index_off = get<field::IndexOffset>(data);
  const uint64_t payload_off = get<field::PayloadOffset>(data);
  if (h.num_layers < 1 || h.num_layers > kMaxLayers) fail("layer count out of range");
  if (!valid_dtype(dtype)) fail("unknown dtype code " + std::to_string(dtype));
  if (layout > 1) fail("unknown layout code " + std::to_string(layout));
  if (h.codec != kCodecRans32x32) fail("unknown codec id " + std::to_string(h.codec));
  h.dtype = (DType)dtype;
  h.layout = (Layout)layout;
  const uint64_t ngroups = 2ull * h.num_layers;
  const uint64_t end = size - 4;
  if (side_off != head + ngroups * kGroupDescBytes || side_off > index_off || index_off > end ||
      index_off % 8 || payload_off != align8(index_off + 4ull * h.num_segments) ||
      payload_off > end)
    fail("section offsets inconsistent");

  MetaBudget budget(size);
  budget.charge(ngroups * sizeof(Group) + (uint64_t)h.num_segments * sizeof(Segment));
  b.groups.reserve(ngroups);
  b.segments.reserve(h.num_segments);
  Reader dr(data, head, side_off);
  uint64_t side_cursor = side_off;
  uint32_t seg_cursor = 0;
  std::vector<DescFields> descs;
  for (uint64_t i = 0; i < ngroups; ++i) {
    DescFields f = read_desc(dr);
    if (f.desc.quantizer == Quantizer::Lossless) f.desc.planes = (uint32_t)dtype_size(h.dtype);
    check_desc(f, seg_cursor, version);
    if (f.side_off != side_cursor || f.side_len > index_off - side_cursor)
      fail("group side data out of bounds");
    budget.charge(group_meta_bytes(f));
    descs.push_back(f);
    side_cursor += f.side_len;
    seg_cursor += f.desc.num_segments;
  }
  if (align8(side_cursor) != index_off) fail("side section has trailing bytes");
  if (seg_cursor != h.num_segments) fail("segment count mismatch");
  parse_sides(descs, version, h.dtype, data, index_off - side_off, b.groups);
  if (h.layout == Layout::Stacked) {
    const GroupDesc& d0 = b.groups[0].desc;
    for (const Group& g : b.groups)
      if (g.desc.tokens != d0.tokens || g.desc.heads != d0.heads || g.desc.head_dim != d0.head_dim)
        fail("stacked layout with differing group shapes");
  }

  Reader ir(data, index_off, payload_off);
  uint64_t cursor = payload_off;
  for (uint32_t gi = 0; gi < b.groups.size(); ++gi) {
    const GroupDesc& d = b.groups[gi].desc;
    for (uint32_t s = 0; s < d.num_segments; ++s) {
      const uint32_t bytes = ir.get<uint32_t>("segment index");
      if (bytes < rans::kStateBytes || (bytes - rans::kStateBytes) % 2 || bytes > end - cursor)
        fail("segment size invalid");
      const uint32_t t0 = s * d.seg_tokens;
      b.segments.push_back({gi, t0, std::min(d.seg_tokens, d.tokens - t0), cursor, bytes});
      cursor += bytes;
    }
  }
  if (cursor != end) fail("payload size does not match segment index");
  b.payload_bytes = end - payload_off;
  return b;
}
}  // namespace

}  // namespace cachegen
