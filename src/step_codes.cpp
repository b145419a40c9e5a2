#include "step_codes.hpp"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "quant.hpp"

namespace cachegen {
namespace {

constexpr int kMaxRice = 15;
// The largest zigzag value two grid codes can differ by: a longer unary run is corrupt.
constexpr uint32_t kMaxZigzag = 2 * (kMaxStepCode - kMinStepCode) + 1;

uint32_t zigzag(int d) { return d >= 0 ? 2u * (uint32_t)d : 2u * (uint32_t)(-d) - 1u; }
int unzigzag(uint32_t z) { return z & 1 ? -(int)((z + 1) / 2) : (int)(z / 2); }

int code_of(uint16_t step) {
  int lo = kMinStepCode, hi = kMaxStepCode;  // grid values never decrease with the code
  const float s = f16_to_f32(step);
  while (lo < hi) {
    const int mid = lo + (hi - lo) / 2;
    if (f16_to_f32(step_code_value(mid)) < s)
      lo = mid + 1;
    else
      hi = mid;
  }
  if (step_code_value(lo) != step) throw std::logic_error("scale off the step-code grid");
  return lo;
}

uint64_t rice_bits(const std::vector<uint32_t>& z, int k) {
  uint64_t bits = 0;
  for (uint32_t v : z) bits += (v >> k) + 1 + k;
  return bits;
}

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}
  void bit(uint32_t b) {
    if (n_ % 8 == 0) out_.push_back(0);
    out_.back() |= (uint8_t)((b & 1) << (n_ % 8));
    ++n_;
  }
  void bits(uint32_t v, int count) {
    for (int i = 0; i < count; ++i) bit(v >> i);
  }

 private:
  std::vector<uint8_t>& out_;
  uint64_t n_ = 0;
};

class BitReader {
 public:
  BitReader(const uint8_t* data, size_t pos, size_t end) : d_(data), pos_(pos), end_(end) {}
  uint32_t bit() {
    if (pos_ + n_ / 8 >= end_) throw FormatError("truncated scale codes");
    const uint32_t b = (d_[pos_ + n_ / 8] >> (n_ % 8)) & 1;
    ++n_;
    return b;
  }
  uint32_t bits(int count) {
    uint32_t v = 0;
    for (int i = 0; i < count; ++i) v |= bit() << i;
    return v;
  }
  size_t end_pos() const { return pos_ + (n_ + 7) / 8; }

 private:
  const uint8_t* d_;
  size_t pos_, end_;
  uint64_t n_ = 0;
};

}  // namespace

void write_step_codes(const std::vector<uint16_t>& steps, std::vector<uint8_t>& out) {
  std::vector<int> codes;
  for (uint16_t s : steps) codes.push_back(code_of(s));
  std::vector<int> sorted = codes;
  std::nth_element(sorted.begin(), sorted.begin() + sorted.size() / 2, sorted.end());
  const int16_t center = (int16_t)sorted[sorted.size() / 2];
  std::vector<uint32_t> z;
  for (int c : codes) z.push_back(zigzag(c - center));
  int k = 0;
  for (int j = 1; j <= kMaxRice; ++j)
    if (rice_bits(z, j) < rice_bits(z, k)) k = j;
  const uint8_t head[3] = {(uint8_t)center, (uint8_t)((uint16_t)center >> 8), (uint8_t)k};
  out.insert(out.end(), head, head + 3);
  BitWriter w(out);
  for (uint32_t v : z) {
    for (uint32_t q = v >> k; q > 0; --q) w.bit(1);
    w.bit(0);
    w.bits(v, k);
  }
}

std::vector<uint16_t> read_step_codes(const uint8_t* data, size_t& pos, size_t end,
                                      uint32_t count) {
  if (end - pos < 3) throw FormatError("truncated scale codes");
  const int center = (int16_t)(data[pos] | data[pos + 1] << 8);
  const int k = data[pos + 2];
  if (k > kMaxRice) throw FormatError("scale codes: bad Rice parameter");
  // Every code takes at least k + 1 bits: refuse before allocating for a count the data lacks.
  if ((uint64_t)(end - pos - 3) * 8 < (uint64_t)count * (k + 1))
    throw FormatError("truncated scale codes");
  BitReader r(data, pos + 3, end);
  std::vector<uint16_t> steps(count);
  for (uint32_t t = 0; t < count; ++t) {
    uint32_t q = 0;
    while (r.bit())
      if (++q > (kMaxZigzag >> k)) throw FormatError("scale codes: code out of range");
    const int code = center + unzigzag((q << k) | r.bits(k));
    if (code < kMinStepCode || code > kMaxStepCode)
      throw FormatError("scale codes: code out of range");
    steps[t] = step_code_value(code);
  }
  pos = r.end_pos();
  return steps;
}

}  // namespace cachegen
