#include "shaping.hpp"

#include <cmath>
#include <string>

#include "common.hpp"

namespace cachegen {

void check_shaping(const Shaping& s, uint32_t tokens, uint32_t channels) {
  if (s.empty()) {
    if (s.dirs_size || !s.diag.empty()) throw InputError("shaping: no direction count");
    return;
  }
  if (s.count > kMaxShapeDirections)
    throw InputError("shaping: at most " + std::to_string(kMaxShapeDirections) +
                     " directions per token");
  if (!s.dirs || s.dirs_size != (size_t)tokens * s.count * channels)
    throw InputError("shaping: need tokens x directions x channels direction entries");
  if (s.diag.size() != channels) throw InputError("shaping: need one diagonal entry per channel");
  for (size_t i = 0; i < s.dirs_size; ++i)
    if (!std::isfinite(s.dirs.get()[i])) throw InputError("shaping: directions must be finite");
  for (float x : s.diag)
    if (!(x >= 0.0f) || !std::isfinite(x))
      throw InputError("shaping: the diagonal must be finite and >= 0");
}

void shape_symbols(const Shaping& sh, uint32_t t, const float* x, float a, const float* b,
                   const float* o, int limit, uint32_t channels, int32_t* s) {
  const uint32_t D = sh.count, C = channels;
  const float* dirs = sh.dirs.get() + (size_t)t * D * C;
  thread_local std::vector<double> e, step, self, r, cross;
  thread_local std::vector<uint8_t> flipped;
  e.resize(C), step.resize(C), cross.resize(C), r.assign(D, 0.0), flipped.assign(C, 0);
  for (uint32_t c = 0; c < C; ++c) {
    step[c] = (double)a * b[c];
    e[c] = (double)s[c] * step[c] + o[c] - x[c];
  }
  self.assign(sh.diag.begin(), sh.diag.end());
  // Direction-major loops over contiguous channels; each sum keeps its order (bit-identical).
  for (uint32_t d = 0; d < D; ++d) {
    const float* g = dirs + (size_t)d * C;
    for (uint32_t c = 0; c < C; ++c) {
      r[d] += g[c] * e[c];
      self[c] += (double)g[c] * g[c];  // J's curvature along channel c, per step^2
    }
  }
  for (int flip = 0; flip < kMaxShapeFlips; ++flip) {
    for (uint32_t c = 0; c < C; ++c) cross[c] = sh.diag[c] * e[c];
    for (uint32_t d = 0; d < D; ++d) {
      const float* g = dirs + (size_t)d * C;
      for (uint32_t c = 0; c < C; ++c) cross[c] += r[d] * g[c];
    }
    double best = 0.0;
    uint32_t pick = C;
    for (uint32_t c = 0; c < C; ++c) {
      const int dir = e[c] > 0.0 ? -1 : 1;  // toward the value's other side
      if (flipped[c] || step[c] <= 0.0 || std::abs(s[c] + dir) > limit) continue;
      const double gain = step[c] * (step[c] * self[c] + 2.0 * dir * cross[c]);
      if (gain < best) best = gain, pick = c;
    }
    if (pick == C) return;
    const int dir = e[pick] > 0.0 ? -1 : 1;
    const double delta = dir * step[pick];
    s[pick] += dir;
    e[pick] += delta;
    for (uint32_t d = 0; d < D; ++d) r[d] += delta * dirs[(size_t)d * C + pick];
    flipped[pick] = 1;
  }
}

}  // namespace cachegen
