// Fuzz target: the blob head (header, descriptors, side data, tables, segment index) as
// parse_blob reads it, checksum verified and not (the two must agree on what they accept).
#include <cstdlib>

#include "reseal.hpp"

using namespace cachegen;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<uint8_t> b = fuzz::resealed(data, size);
  bool verified_ok = false, unverified_ok = false;
  try {
    const ParsedBlob p = parse_blob(b.data(), b.size(), true);
    verified_ok = true;
    size_t cursor = p.segments.empty() ? 0 : p.segments[0].offset;
    for (const Segment& s : p.segments) {  // segments tile the payload, inside the blob
      if (s.offset != cursor || s.offset + s.bytes > b.size() - 4) std::abort();
      cursor += s.bytes;
    }
  } catch (const FormatError&) {
  }
  try {
    parse_blob(b.data(), b.size(), false);
    unverified_ok = true;
  } catch (const FormatError&) {
  }
  if (verified_ok != unverified_ok) std::abort();
  return 0;
}
