// A strided view of one K or V tensor of one layer: element (token, head, dim) lives at
// data + token_offset(token) + head*s_head + dim*s_dim (strides in elements). Channel =
// head*dim + d. A plain view puts token t at t*s_token; a paged view (a serving engine's KV
// blocks) puts it at block_table[t / block_size]*s_block + (t % block_size)*s_token.
// Rows (one token's channels) move in and out as fp32, converting with F16C where the CPU has it.
#pragma once
#include <cstdint>
#include <string>

#include "common.hpp"

namespace cachegen {

// Element offset of token t's first channel: the one addressing rule of every path (CPU rows,
// importance features, CUDA kernels).
CG_HD int64_t token_offset(const int32_t* block_table, uint32_t block_size, int64_t s_block,
                           int64_t s_token, uint32_t t) {
  if (!block_table) return (int64_t)t * s_token;
  return (int64_t)block_table[t / block_size] * s_block + (int64_t)(t % block_size) * s_token;
}

struct TensorView {
  void* data = nullptr;
  DType dtype = DType::F16;
  uint32_t tokens = 0, heads = 0, head_dim = 0;
  int64_t s_token = 0, s_head = 0, s_dim = 0;
  // Paged views only (block_table null: plain). Ids must lie in [0, num_blocks).
  const int32_t* block_table = nullptr;  // ceil(tokens / block_size) entries, host memory
  uint32_t block_size = 0, num_blocks = 0;
  int64_t s_block = 0;

  uint32_t channels() const { return heads * head_dim; }
  // Channels of a token are adjacent in memory.
  bool dense_rows() const { return s_dim == 1 && (heads == 1 || s_head == (int64_t)head_dim); }
  uint32_t table_entries() const {
    return block_table ? (tokens + block_size - 1) / block_size : 0;
  }
  int64_t token_offset(uint32_t t) const {
    return cachegen::token_offset(block_table, block_size, s_block, s_token, t);
  }
};

// Throws InputError unless a paged view's block size is >= 1 and every block id it uses lies in
// [0, num_blocks); `what` names the view in the message.
void check_paging(const TensorView& v, const std::string& what);

void load_row(const TensorView& v, uint32_t token, float* row);
void store_row(const TensorView& v, uint32_t token, const float* row);
// n consecutive tokens' rows ([n, channels] fp32); views whose tokens are adjacent in memory
// (the vLLM CPU backend's keys) are written a channel at a time.
void store_rows(const TensorView& v, uint32_t token, uint32_t n, const float* rows);
// n consecutive tokens' rows already in the view's dtype ([n, channels], dense), into a view
// whose rows are not dense (paged heads, transposed key pages). `avx512`: a token-adjacent view
// of 16-bit elements moves 32 tokens at a time through transpose_tile_avx512 (the CPU must
// have AVX-512; stream_fence() must follow).
void store_native_rows(const TensorView& v, uint32_t token, uint32_t n, const void* rows,
                       bool avx512);
// The first m tokens (a multiple of 32) of every whole group of 8 channels of a tile ([m, C]
// 16-bit rows, row stride C) into a token-adjacent view's tokens from `base` (see store_rows):
// each 32 tokens of a channel leave in one 64-byte store, non-temporal where that store is a
// whole aligned cache line (src/simd/avx512.cpp).
void transpose_tile_avx512(const uint16_t* tile, uint32_t C, uint32_t m, const TensorView& v,
                           uint16_t* base);

// Asks the cache for the lines of the row at `row` (a token's first element) that a store is
// about to write (a hint: no fault, no effect on the data). A token-adjacent view (s_token == 1)
// fetches its channels' lines at the token that starts them; an element-strided one gets none.
void prefetch_row(const TensorView& v, const uint8_t* row);

// A row's raw bits in the view's own dtype: channels() elements of dtype_size bytes.
void load_bits(const TensorView& v, uint32_t token, uint8_t* bits);
void store_bits(const TensorView& v, uint32_t token, const uint8_t* bits);

// "f16c" or "scalar": how fp16 rows are converted on this CPU.
const char* convert_backend();

}  // namespace cachegen
