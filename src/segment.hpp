// Decoding one segment's symbols on the CPU: lanes served in ascending order within each step,
// exactly as a GPU warp serves them (see rans.hpp). A cursor carries the stream's position, so a
// segment decodes a tile of rows at a time; the vector kernels (src/simd/) run the same steps
// and fall back to decode_scalar wherever fewer than a full step's words remain.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "cpu_path.hpp"
#include "quant.hpp"
#include "rans.hpp"

namespace cachegen {

// A group's decoder tables: `lut` holds kProbScale packed entries per table, and
// chan_off[i] = kProbScale * (table of channel i % channels) for i < channels + kLanes, so a
// run of up to kLanes channels starting anywhere reads its offsets in one contiguous load.
struct DecodeTables {
  const uint32_t* lut = nullptr;
  const uint32_t* chan_off = nullptr;
  uint32_t channels = 0;
};

// Fills `off` (channels + kLanes entries) from a channel -> table map.
inline void fill_channel_offsets(const std::vector<uint8_t>& channel_table,
                                 std::vector<uint32_t>& off) {
  const size_t C = channel_table.size();
  off.resize(C + rans::kLanes);
  for (size_t i = 0; i < off.size(); ++i) off[i] = channel_table[i % C] * rans::kProbScale;
}

// Where a segment's decode stands: lane states, the next word, the next symbol's lane and
// channel. A word a lane needs past the end is clamped (rans::clamp_word) and flags `overrun`.
struct RansCursor {
  uint32_t state[rans::kLanes];
  const uint8_t* words;
  size_t nwords, wp = 0;
  uint32_t overrun = 0, lane = 0, channel = 0;

  RansCursor(const uint8_t* seg, size_t bytes) : nwords((bytes - rans::kStateBytes) / 2) {
    static const uint8_t kZeroWord[2] = {0, 0};
    std::memcpy(state, seg, rans::kStateBytes);
    words = nwords ? seg + rans::kStateBytes : kZeroWord;  // a readable word even when empty
  }

  // Throws FormatError unless the stream closed exactly: all words used, every state back at
  // its initial value.
  void finish() const {
    bool clean = !overrun && wp == nwords;
    for (uint32_t l = 0; l < rans::kLanes; ++l) clean &= state[l] == rans::kLowerBound;
    if (!clean) throw FormatError("segment payload is corrupt (rANS stream did not close)");
  }
};

// Decodes the cursor's next n symbols into out, one symbol at a time.
inline void decode_scalar(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out) {
  uint32_t lane = r.lane, c = r.channel;
  for (size_t i = 0; i < n; ++i) {
    uint32_t& x = r.state[lane];
    const uint32_t e = t.lut[t.chan_off[c] + (x & (rans::kProbScale - 1))];
    x = rans::dec_advance(x, e);
    const uint32_t need = rans::dec_needs_word(x);
    uint16_t w;
    std::memcpy(&w, r.words + 2 * rans::clamp_word(r.wp, r.nwords, need, r.overrun), 2);
    x = rans::dec_renorm(x, need, w);
    r.wp += need;
    out[i] = (int8_t)((int)rans::dec_symbol_index(e) - kSymbolBias);
    lane = (lane + 1) % rans::kLanes;
    c = c + 1 == t.channels ? 0 : c + 1;
  }
  r.lane = lane;
  r.channel = c;
}

// Whole steps of a vector kernel, to the stream's end: `steps_fn(cursor, first, steps)` runs steps
// from the segment-relative step `first` on while the kLanes words a step may read remain, and
// returns how many ran. The last steps read a copy of the words left, padded with the last word as
// rans::clamp_word reads past the end, so the scalar loop is left only the symbols short of a
// whole step, and a corrupt stream decodes and flags overrun exactly as it does there.
template <typename StepsFn>
size_t whole_steps(RansCursor& r, size_t steps, StepsFn&& steps_fn) {
  size_t done = steps_fn(r, 0, steps);
  if (done == steps || r.wp > r.nwords) return done;  // done, or overran already
  uint16_t pad[2 * rans::kLanes], last = 0;
  const size_t left = r.nwords - r.wp;
  if (r.nwords) std::memcpy(&last, r.words + 2 * (r.nwords - 1), 2);
  std::fill(pad, pad + 2 * rans::kLanes, last);
  std::memcpy(pad, r.words + 2 * r.wp, 2 * left);
  RansCursor tail = r;
  tail.words = reinterpret_cast<const uint8_t*>(pad);
  tail.nwords = left + rans::kLanes;  // steps start while at most `left` words are used
  tail.wp = 0;
  done += steps_fn(tail, done, steps - done);
  std::memcpy(r.state, tail.state, rans::kStateBytes);
  r.channel = tail.channel;
  r.wp += tail.wp;
  r.overrun |= tail.wp > left;
  return done;
}

// The next n symbols through a vector kernel's whole steps (`steps_fn(cursor, steps, out)` runs
// up to `steps` steps into out and returns how many ran), the symbols before the cursor is back
// at lane 0 and those short of a step decoded by the scalar loop: what each vector path's decode
// is, its kernel aside.
template <typename StepsFn>
void decode_vector(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out,
                   StepsFn&& steps_fn) {
  const size_t head = std::min(n, (size_t)((rans::kLanes - r.lane) % rans::kLanes));
  decode_scalar(r, t, head, out);
  out += head;
  const size_t done =
      whole_steps(r, (n - head) / rans::kLanes, [&](RansCursor& c, size_t first, size_t steps) {
        return steps_fn(c, steps, out + first * rans::kLanes);
      });
  decode_scalar(r, t, n - head - done * rans::kLanes, out + done * rans::kLanes);
}

// Vector kernels (src/simd/decode_*.cpp): the same result as decode_scalar, bit for bit.
void decode_avx2(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out);
void decode_avx512(RansCursor& r, const DecodeTables& t, size_t n, int8_t* out);

// Where decode_rows_* put what they decode: row k of C channels reconstructed with scale
// a[k] (and b, o per channel) and converted into dst[k], laid out as `runs` (see quant.hpp).
struct RowSink {
  const float *a, *b, *o;
  RowRuns runs;
  DType dtype;
  uint8_t* const* dst;
};

// Whether decode_rows_* can take rows laid out as `runs`: every step of kLanes channels lands
// inside one run, so a kernel stores whole registers.
inline bool rows_fuse(const RowRuns& runs) { return runs.length % rans::kLanes == 0; }

// Where the steps of decode_rows_* go, from the segment-relative step `first` of n rows on: the
// address of the step's first channel in its row (Elem bytes per element), its b and o, the row's
// a; next() moves on by a step, through the row's runs and on to the next row.
template <size_t Elem>
class StepRows {
 public:
  // The sink is copied: the kernels' stores may alias anything, so fields read through a
  // reference would be read again after every store.
  StepRows(const RowSink& s, uint32_t channels, uint32_t n, size_t first) : s_(s), n_(n) {
    const uint32_t per_row = channels / rans::kLanes;
    const uint32_t c = (uint32_t)(first % per_row) * rans::kLanes, in_run = c % s.runs.length;
    k_ = (uint32_t)(first / per_row);
    run_ = c / s.runs.length;
    left_ = s.runs.length - in_run;
    d_ = s.dst[k_] + run_ * s.runs.stride + (size_t)in_run * Elem;
    b_ = s.b + c;
    o_ = s.o + c;
    a_ = s.a[k_];
  }
  uint8_t* dst() const { return d_; }
  const float* b() const { return b_; }
  const float* o() const { return o_; }
  float a() const { return a_; }
  void next() {
    d_ += rans::kLanes * Elem;
    b_ += rans::kLanes;
    o_ += rans::kLanes;
    if ((left_ -= rans::kLanes) > 0) return;
    left_ = s_.runs.length;
    if (++run_ < s_.runs.count) {
      d_ = s_.dst[k_] + run_ * s_.runs.stride;
      return;
    }
    run_ = 0;
    b_ = s_.b;
    o_ = s_.o;
    if (++k_ == n_) return;  // the last row is done
    d_ = s_.dst[k_];
    a_ = s_.a[k_];
  }

 private:
  const RowSink s_;
  const uint32_t n_;
  uint32_t k_, run_, left_;
  uint8_t* d_;
  const float *b_, *o_;
  float a_;
};

// n rows of t.channels symbols decoded, reconstructed and converted in one pass, from a cursor
// at a row's first symbol (rows_fuse(sink.runs)): the bits dequantize_rows_* writes from the
// symbols decode_symbols gives, without the symbols' round trip through memory. The vector paths
// only: the scalar path keeps its symbols-then-rows tiles.
void decode_rows_avx2(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink);
void decode_rows_avx512(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink);

// The same rows through the scalar loops: what a build without the vector kernels runs.
inline void decode_rows_scalar(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& s) {
  std::vector<int8_t> sym((size_t)n * t.channels);
  decode_scalar(r, t, sym.size(), sym.data());
  dequantize_rows_scalar(sym.data(), s.a, s.b, s.o, t.channels, n, s.runs, s.dtype, s.dst);
}

// What each decode_rows_* is around its kernel: `steps_fn(dtype, stream, cursor, first, steps)`
// (as whole_steps takes steps, with the row kind's tags of with_row_kind).
template <typename StepsFn>
void decode_rows_with(RansCursor& r, const DecodeTables& t, uint32_t n, const RowSink& sink,
                      StepsFn&& steps_fn) {
  if (n == 0) return;
  with_row_kind(sink.dtype, sink.runs, sink.dst, n, [&](auto d, auto stream) {
    whole_steps(r, (size_t)n * (t.channels / rans::kLanes),
                [&](RansCursor& c, size_t first, size_t steps) {
                  return steps_fn(d, stream, c, first, steps);
                });
  });
}

inline void decode_symbols(CpuPath path, RansCursor& r, const DecodeTables& t, size_t n,
                           int8_t* out) {
  on_path(path, decode_scalar, decode_avx2, decode_avx512)(r, t, n, out);
}

// Decodes a whole segment (tokens * channels symbols) into out ([tokens, channels]); throws
// FormatError if the stream does not close exactly.
inline void decode_segment(CpuPath path, const uint8_t* seg, size_t bytes, uint32_t tokens,
                           const DecodeTables& t, int8_t* out) {
  RansCursor r(seg, bytes);
  decode_symbols(path, r, t, (size_t)tokens * t.channels, out);
  r.finish();
}

}  // namespace cachegen
