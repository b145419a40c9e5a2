// Bit streams of the side data (scale codes, probability tables, table maps): bits are packed
// from each byte's least significant bit on; writes go through a 64-bit accumulator, reads
// through a 64-bit window (zeros past the end, caught by skip()).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common.hpp"

namespace cachegen {

class BitWriter {
 public:
  explicit BitWriter(std::vector<uint8_t>& out) : out_(out) {}
  void bits(uint64_t v, int count) {  // count <= 32
    acc_ |= (v & ((uint64_t{1} << count) - 1)) << fill_;
    for (fill_ += count; fill_ >= 8; fill_ -= 8, acc_ >>= 8) out_.push_back((uint8_t)acc_);
  }
  void ones(uint32_t n) {
    for (; n >= 32; n -= 32) bits(0xffffffffu, 32);
    bits(0xffffffffu, (int)n);
  }
  void finish() {  // pad to a byte
    if (fill_) out_.push_back((uint8_t)acc_);
    acc_ = 0;
    fill_ = 0;
  }

 private:
  std::vector<uint8_t>& out_;
  uint64_t acc_ = 0;
  int fill_ = 0;
};

// The run of one-bits that starts `w` (its lowest bits): the unary prefix of a code read from it.
inline uint32_t ones_run(uint64_t w) { return ~w ? (uint32_t)__builtin_ctzll(~w) : 64; }

class BitReader {
 public:
  static constexpr uint32_t kWindow = 56;  // valid bits in every peek()
  // `what` names the stream in errors ("truncated <what>").
  BitReader(const uint8_t* data, size_t pos, size_t end, const char* what)
      : d_(data), end_(end), bit_(pos * 8), end_bit_(end * 8), what_(what) {}
  uint64_t peek() const {
    const size_t byte = bit_ / 8;
    uint64_t w = 0;
    if (byte + 8 <= end_)
      std::memcpy(&w, d_ + byte, 8);  // one load
    else if (byte < end_)
      std::memcpy(&w, d_ + byte, end_ - byte);
    return w >> (bit_ % 8);
  }
  void skip(uint32_t n) {
    bit_ += n;
    if (bit_ > end_bit_) throw FormatError(std::string("truncated ") + what_);
  }
  uint32_t take(int n) {  // n <= 32
    const uint32_t v = n ? (uint32_t)(peek() & ((uint64_t{1} << n) - 1)) : 0;
    skip((uint32_t)n);
    return v;
  }
  // The length of the run of one-bits that starts the stream, and its terminating zero; a run
  // longer than `limit` is corrupt.
  uint32_t unary(uint32_t limit) {
    for (uint32_t q = 0;;) {
      const uint64_t w = peek();
      const uint32_t run = ones_run(w);
      if (run < kWindow) {
        skip(run + 1);
        if ((q += run) > limit) break;
        return q;
      }
      skip(kWindow);
      if ((q += kWindow) > limit) break;
    }
    throw FormatError(std::string(what_) + ": code out of range");
  }
  // A Rice code: a unary quotient (at most `limit`) then k <= 24 low bits. One window read
  // serves the whole code when it fits, as almost every code does.
  uint32_t rice(int k, uint32_t limit) {
    const uint64_t w = peek();
    const uint32_t run = ones_run(w);
    if (run + 1 + (uint32_t)k > kWindow) {
      const uint32_t q = unary(limit);
      return (q << k) | take(k);
    }
    skip(run + 1);
    if (run > limit) throw FormatError(std::string(what_) + ": code out of range");
    skip((uint32_t)k);
    return (run << k) | (uint32_t)((w >> (run + 1)) & ((uint64_t{1} << k) - 1));
  }
  // n Rice codes, each as rice(k, limit) reads it, handed to put(value) in order. The codes are
  // cut from one window kept in a register and reloaded only when what is left of it may not
  // hold the next code: a code costs a count of ones and a shift, not a load after the last one.
  // A stream that ends early throws at the next reload or after the last code.
  template <typename Put>
  void rice_codes(uint32_t n, int k, uint32_t limit, Put&& put) {
    const uint64_t low = (uint64_t{1} << k) - 1;
    uint64_t w = peek();
    uint32_t left = kWindow;  // bits of w not yet used
    for (uint32_t i = 0; i < n; ++i) {
      uint32_t run = ones_run(w);
      if (run + 1 + (uint32_t)k > left) {
        skip(kWindow - left);
        w = peek();
        left = kWindow;
        run = ones_run(w);
        if (run + 1 + (uint32_t)k > kWindow) {  // longer than a window: the general reader
          put(rice(k, limit));
          w = peek();
          continue;
        }
      }
      if (run > limit) throw FormatError(std::string(what_) + ": code out of range");
      put((run << k) | (uint32_t)((w >> (run + 1)) & low));
      w >>= run + 1 + (uint32_t)k;
      left -= run + 1 + (uint32_t)k;
    }
    skip(kWindow - left);
  }
  size_t end_pos() const { return (bit_ + 7) / 8; }

 private:
  const uint8_t* d_;
  size_t end_, bit_, end_bit_;
  const char* what_;
};

// A LEB128 varint of at most `max_bytes` bytes (<= 5) at data[pos..end), advancing pos; throws
// FormatError("truncated <what>") past end and "malformed varint in <what>" on a longer code or
// a value over 32 bits.
inline uint32_t read_varint(const uint8_t* data, size_t& pos, size_t end, int max_bytes,
                            const char* what) {
  uint64_t v = 0;
  for (int i = 0; i < max_bytes; ++i) {
    if (pos >= end) throw FormatError(std::string("truncated ") + what);
    const uint8_t b = data[pos++];
    v |= (uint64_t)(b & 0x7f) << (7 * i);
    if (!(b & 0x80)) {
      if (v > UINT32_MAX) break;
      return (uint32_t)v;
    }
  }
  throw FormatError(std::string("malformed varint in ") + what);
}

}  // namespace cachegen
