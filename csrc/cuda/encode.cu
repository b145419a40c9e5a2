// GPU encode: the stages of encode_stages.cuh in order, everything but the blob's head on the
// device:
//   1. device: statistics, parameters, symbols, histograms, and the table fit's clusterings;
//   2. host: each group's parameters and tables (the table count chosen by the CPU's search; a
//      group whose fit could round differently, or outside the device fit's limits, is fitted on
//      the host from its histograms);
//   3. device: rANS per segment and the segments' offsets, while the host writes the head;
//   4. device: compaction and CRC32C; the blob to the caller's memory.
#include <atomic>

#include "encode_stages.cuh"
#include "parallel.hpp"

namespace cachegen::cuda {
namespace {

void check_supported(Quantizer kind, uint8_t all_flags) {
  if (kind == Quantizer::Lossless)
    throw InputError("the lossless level has no GPU encoder: encode a host copy of the cache");
  // How scales travel and the verbatim rows do not change which parameters the kernels fit.
  const uint8_t flags = all_flags & ~(kTokenCodes | kChannelCodes | kRawRows);
  const bool ok = flags == kTokenScale ||
                  (flags == (kChannelScale | kChannelOffset) &&
                   (kind == Quantizer::ChannelStep || kind == Quantizer::LayerStep)) ||
                  flags == (kTokenScale | kChannelOffset) ||
                  (flags == (kTokenScale | kChannelScale) && kind == Quantizer::TokenStep);
  if (!ok) throw InputError("this quantizer has no GPU encoder yet; encode on the CPU");
}

// Takes `n` units of a running total: the offset where they start.
size_t take(size_t& total, size_t n) {
  const size_t at = total;
  total += n;
  return at;
}

// A group's plan; its buffers are taken from the plan's running totals.
GroupPlan group_plan(const GroupSpec& s, const EncodeRequest& req, EncodePlan& plan) {
  GroupPlan p;
  p.desc = plan_group(s, req.segment_symbols);
  p.quant = quantizer_layout(s.quantizer, s.param, s.weights, s.view.tokens, s.view.channels(),
                             s.raw_rows);
  check_supported(s.quantizer, p.quant.flags);
  if (!s.weights.shape.empty())
    throw InputError("shaped key rounding has no GPU encoder: encode on the CPU");
  const uint32_t T = p.desc.tokens, C = p.desc.channels();
  const uint8_t fl = p.quant.flags;
  p.token_scale = take(plan.scales, fl & kTokenScale ? T : 0);
  p.channel_scale = take(plan.scales, fl & kChannelScale ? C : 0);
  p.channel_offset = take(plan.scales, fl & kChannelOffset ? C : 0);
  plan.scales = (plan.scales + 7) & ~size_t{7};
  p.symbols = take(plan.symbols, (size_t)T * C);
  p.hist = take(plan.hists, (size_t)C * kAlphabet);
  p.terms = take(plan.terms, s.quantizer == Quantizer::LayerStep ? C : 0);
  p.gpu_fit = fits_on_device(T, C, s.max_tables);
  p.fit = take(plan.fits, p.gpu_fit ? fit_bytes(C) : 0);
  p.raw = take(plan.raws, align16(4ull * p.quant.raw_rows * C));
  return p;
}

EncodePlan plan_encode(const EncodeRequest& req) {
  EncodePlan plan;
  for (const GroupSpec& s : req.groups) {
    if (s.view.dtype != req.groups[0].view.dtype)
      throw InputError("all KV tensors must share one dtype");
    plan.groups.push_back(group_plan(s, req, plan));
  }
  plan.res_fit = align16(EncodePlan::res_scales + 2 * plan.scales);
  plan.res_raw = plan.res_fit + plan.fits;
  plan.res_bytes = plan.res_raw + plan.raws;
  return plan;
}

// Token step weights of every group, back to back; `at` gets each group's offset.
std::vector<float> token_weights(const EncodeRequest& req, std::vector<size_t>& at) {
  std::vector<float> w;
  for (const GroupSpec& s : req.groups) {
    at.push_back(w.size());
    w.insert(w.end(), s.weights.token.begin(), s.weights.token.end());
  }
  return w;
}

// Device memory of stages 1 and 2: the results read back (non-finite flag, scales, table fits,
// raw rows), symbols, histograms, LayerStep terms, token step weights.
struct QuantBuffers {
  std::vector<size_t> weights_at;
  std::vector<float> weights_host;
  DeviceBuffer results, symbols, hists, terms, weights;

  QuantBuffers(const EncodeRequest& req, const EncodePlan& plan, cudaStream_t st)
      : weights_host(token_weights(req, weights_at)),
        results(plan.res_bytes, st),
        symbols(plan.symbols, st),
        hists(4 * plan.hists, st),
        terms(sizeof(ChanTerms) * plan.terms, st),
        weights(4 * weights_host.size() + 16, st) {
    // Channel scales fixed by step weights go where the scales are read back from, stream-ordered
    // before the kernels that read them.
    if (!weights_host.empty())
      CG_CUDA(cudaMemcpyAsync(weights.get(), weights_host.data(), 4 * weights_host.size(),
                              cudaMemcpyHostToDevice, st));
    for (const GroupPlan& p : plan.groups)
      if (p.quant.flags & kTokenScale && p.quant.flags & kChannelScale)
        CG_CUDA(cudaMemcpyAsync(scales() + p.channel_scale, p.quant.channel_scale.data(),
                                2 * p.quant.channel_scale.size(), cudaMemcpyHostToDevice, st));
  }
  uint16_t* scales() const {
    return reinterpret_cast<uint16_t*>(results.get() + EncodePlan::res_scales);
  }
};

GroupDev group_dev(const EncodeRequest& req, const EncodePlan& plan, size_t i,
                   const QuantBuffers& b, const View& in) {
  const GroupSpec& s = req.groups[i];
  const GroupPlan& p = plan.groups[i];
  const uint8_t fl = p.quant.flags;
  GroupDev g;
  g.in = in;
  g.tokens = p.desc.tokens;
  g.channels = p.desc.channels();
  g.kind = s.quantizer;
  g.param = s.param;
  g.max_symbol = p.quant.max_symbol;
  g.token_scale = fl & kTokenScale ? b.scales() + p.token_scale : nullptr;
  g.channel_scale = fl & kChannelScale ? b.scales() + p.channel_scale : nullptr;
  g.channel_offset = fl & kChannelOffset ? b.scales() + p.channel_offset : nullptr;
  g.token_weight = s.weights.token.empty() ? nullptr : b.weights.get<float>() + b.weights_at[i];
  g.terms = s.quantizer == Quantizer::LayerStep ? b.terms.get<ChanTerms>() + p.terms : nullptr;
  g.symbols = b.symbols.get<int8_t>() + p.symbols;
  g.hist = b.hists.get<uint32_t>() + p.hist;
  g.fit = p.gpu_fit ? b.results.get() + plan.res_fit + p.fit : nullptr;
  g.table_limit = table_limit(s.max_tables, g.channels);
  g.raw_rows = p.quant.raw_rows;
  g.raw = reinterpret_cast<float*>(b.results.get() + plan.res_raw + p.raw);
  return g;
}

std::vector<GroupDev> group_devs(const EncodeRequest& req, const EncodePlan& plan,
                                 const QuantBuffers& b, const DeviceViews& in) {
  std::vector<GroupDev> devs;
  for (size_t i = 0; i < plan.groups.size(); ++i)
    devs.push_back(group_dev(req, plan, i, b, in.views()[i]));
  return devs;
}

// Stage 1, queued and waited for: the results (scales, table fits, raw rows) in host memory.
Pinned quantize_and_fit(const EncodeRequest& req, const EncodePlan& plan,
                        const std::vector<GroupDev>& devs, const QuantBuffers& b, cudaStream_t st,
                        StageTimer& timer) {
  Arena meta;
  const size_t devs_at = meta.add(devs);
  const QuantizeStage quantize(req, plan, meta);
  const TableFitStage fit(plan, meta);
  DeviceBuffer meta_buf(meta.size() + 16, st);
  meta.upload(meta_buf.get(), st);
  const auto* d = reinterpret_cast<const GroupDev*>(meta_buf.get() + devs_at);
  auto* nonfinite = reinterpret_cast<uint32_t*>(b.results.get() + EncodePlan::res_bad);
  EventClock clock;
  CG_CUDA(cudaMemsetAsync(b.results.get(), 0, 16, st));
  CG_CUDA(cudaMemsetAsync(b.hists.get(), 0, 4 * plan.hists, st));
  clock.mark(st);
  quantize.queue(req.groups[0].view.dtype, meta_buf.get(), d, nonfinite, st,
                 [&] { clock.mark(st); });
  clock.mark(st);
  fit.queue(meta_buf.get(), d, st);
  clock.mark(st);
  CG_CUDA(cudaGetLastError());
  Pinned res(plan.res_bytes);
  CG_CUDA(cudaMemcpyAsync(res.get(), b.results.get(), plan.res_bytes, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaStreamSynchronize(st));
  timer.mark("quantize + fit tables (device)");
  clock.report(timer,
               {"  of which statistics + parameters (kernels)",
                "  of which quantize + histograms (kernel)", "  of which table fit (kernel)"});
  uint32_t bad;
  std::memcpy(&bad, res.get() + EncodePlan::res_bad, 4);
  if (bad) throw InputError("KV tensor contains NaN or Inf");
  return res;
}

// A group's parameters as stage 1 fitted them (`res`: the results in host memory).
Group fitted_group(const GroupPlan& p, const EncodePlan& plan, const uint8_t* res) {
  Group g;
  g.desc = p.desc;
  g.quant = p.quant;
  const auto* hs = reinterpret_cast<const uint16_t*>(res + EncodePlan::res_scales);
  const uint32_t T = p.desc.tokens, C = p.desc.channels();
  if (p.quant.flags & kTokenScale)
    g.quant.token_scale.assign(hs + p.token_scale, hs + p.token_scale + T);
  if (p.quant.flags & kChannelScale)
    g.quant.channel_scale.assign(hs + p.channel_scale, hs + p.channel_scale + C);
  if (p.quant.flags & kChannelOffset)
    g.quant.channel_offset.assign(hs + p.channel_offset, hs + p.channel_offset + C);
  const auto* raw = reinterpret_cast<const float*>(res + plan.res_raw + p.raw);
  g.quant.raw.assign(raw, raw + (size_t)p.quant.raw_rows * C);
  return g;
}

// Stage 2 (host): every group's parameters and tables, and its encoder tables.
struct FittedGroups {
  std::vector<EncodedGroup> groups;
  std::vector<std::vector<EncTable>> enc;
  uint32_t host_fits = 0;  // groups whose tables were fitted on the host
};

FittedGroups fit_groups(const EncodeRequest& req, const EncodePlan& plan, const uint8_t* res,
                        const uint32_t* hists) {
  const size_t n = plan.groups.size();
  FittedGroups out{std::vector<EncodedGroup>(n), std::vector<std::vector<EncTable>>(n), 0};
  std::atomic<uint32_t> host_fits{0};
  parallel_for(n, req.threads, [&](size_t i) {
    const GroupPlan& p = plan.groups[i];
    const uint32_t C = p.desc.channels(), max_tables = req.groups[i].max_tables;
    Group& g = out.groups[i].group;
    g = fitted_group(p, plan, res);
    std::optional<TableSet> ts;
    if (p.gpu_fit) ts = tables_from_fit(res + plan.res_fit + p.fit, C, table_limit(max_tables, C));
    if (!ts) {
      ++host_fits;
      std::vector<Histogram> h(C);
      CG_CUDA(cudaMemcpy(h.data(), hists + p.hist, (size_t)C * sizeof(Histogram),
                         cudaMemcpyDeviceToHost));
      ts = fit_tables(h, max_tables);
    }
    g.tables = std::move(*ts);
    for (const Table& t : g.tables.tables) out.enc[i].push_back(encoder_symbols(t));
  });
  out.host_fits = host_fits;
  return out;
}

// Stage 3 on the device: the groups (now pointing at their encoder tables and maps), the
// segments and their blocks, coding regions, sizes and offsets.
class CodingStage {
 public:
  CodingStage(const EncodePlan& plan, std::vector<GroupDev> devs, const FittedGroups& fitted,
              cudaStream_t st) {
    for (size_t i = 0; i < devs.size(); ++i)
      devs[i].num_tables = (uint32_t)fitted.groups[i].group.tables.tables.size();
    sp_ = plan_segments(plan, devs);
    Arena meta;
    std::vector<size_t> tables_at, maps_at;
    for (size_t i = 0; i < devs.size(); ++i) {
      tables_at.push_back(meta.add(fitted.enc[i]));
      maps_at.push_back(meta.add(fitted.groups[i].group.tables.channel_table));
    }
    const size_t segs_at = meta.add(sp_.segs);
    const size_t work_at[2] = {meta.add(sp_.work[0]), meta.add(sp_.work[1])};
    const size_t devs_at = meta.add(devs);
    const size_t nseg = sp_.segs.size();
    meta_.emplace(meta.size() + 16, st);
    regions_.emplace(sp_.region_bytes, st);
    sizes_.emplace(4 * nseg + 8 * (nseg + 1) + 16, st);
    uint8_t* m = meta_->get();
    for (size_t i = 0; i < devs.size(); ++i) {
      devs[i].tables = reinterpret_cast<const EncTable*>(m + tables_at[i]);
      devs[i].table_of = m + maps_at[i];
    }
    meta.overwrite(devs_at, devs);
    meta.upload(m, st);
    segs_ = reinterpret_cast<const SegmentDev*>(m + segs_at);
    devs_ = reinterpret_cast<const GroupDev*>(m + devs_at);
    for (int k = 0; k < 2; ++k) work_[k] = reinterpret_cast<const Work*>(m + work_at[k]);
  }

  uint32_t segments() const { return (uint32_t)sp_.segs.size(); }
  const uint32_t* sizes() const { return sizes_->get<uint32_t>(); }
  uint64_t* offsets() const {
    return reinterpret_cast<uint64_t*>(sizes_->get() + ((4 * segments() + 7) & ~size_t{7}));
  }

  void queue(cudaStream_t st) const {
    queue_rans(sp_, segs_, work_, devs_, regions_->get(), sizes_->get<uint32_t>(), offsets(), st);
  }

  CodedSegments coded(uint64_t payload_bytes) const {
    return {.count = segments(),
            .segs = segs_,
            .devs = devs_,
            .regions = regions_->get(),
            .sizes = sizes(),
            .offsets = offsets(),
            .payload_bytes = payload_bytes};
  }

 private:
  SegmentPlan sp_;
  std::optional<DeviceBuffer> meta_, regions_, sizes_;
  const SegmentDev* segs_ = nullptr;
  const GroupDev* devs_ = nullptr;
  const Work* work_[2] = {nullptr, nullptr};
};

// Stage 3: the segments coded on the device while the host writes the head (with placeholder
// segment sizes, then patched); returns the head and the payload's size.
std::pair<std::vector<uint8_t>, uint64_t> code_segments(const EncodeRequest& req,
                                                        FittedGroups& fitted,
                                                        const CodingStage& coding,
                                                        cudaStream_t st) {
  coding.queue(st);
  const uint32_t nseg = coding.segments();
  Pinned sizes(4 * nseg + 8);
  CG_CUDA(cudaMemcpyAsync(sizes.get(), coding.sizes(), 4 * nseg, cudaMemcpyDeviceToHost, st));
  CG_CUDA(cudaMemcpyAsync(sizes.get() + 4 * nseg, coding.offsets() + nseg, 8,
                          cudaMemcpyDeviceToHost, st));
  for (EncodedGroup& g : fitted.groups) g.segment_bytes.assign(g.group.desc.num_segments, 0);
  std::vector<uint8_t> head = blob_head(blob_header(req), fitted.groups, req.threads, 0);
  CG_CUDA(cudaStreamSynchronize(st));
  uint64_t payload_bytes;
  std::memcpy(&payload_bytes, sizes.get() + 4 * nseg, 8);
  patch_head(head, reinterpret_cast<const uint32_t*>(sizes.get()), nseg, payload_bytes);
  return {std::move(head), payload_bytes};
}

}  // namespace

void encode(const EncodeRequest& req, int device, uintptr_t stream, const BlobAllocator& alloc,
            bool device_out) {
  check_request(req);
  use_device(device);
  const cudaStream_t st = as_stream(stream);
  StageTimer timer("encode");
  const EncodePlan plan = plan_encode(req);
  const QuantBuffers buffers(req, plan, st);
  std::vector<const TensorView*> inputs;
  for (const GroupSpec& s : req.groups) inputs.push_back(&s.view);
  const DeviceViews in(inputs, st);
  std::vector<GroupDev> devs = group_devs(req, plan, buffers, in);

  const Pinned results = quantize_and_fit(req, plan, devs, buffers, st, timer);
  FittedGroups fitted = fit_groups(req, plan, results.get(), buffers.hists.get<uint32_t>());
  const CodingStage coding(plan, std::move(devs), fitted, st);
  timer.mark(fitted.host_fits ? "tables (host, some groups fitted on host)" : "tables (host)");

  const auto [head, payload_bytes] = code_segments(req, fitted, coding, st);
  timer.mark("rANS encode (device) + head (host)");
  assemble_blob(head, coding.coded(payload_bytes), alloc, device_out, req.threads, st, timer);
}

}  // namespace cachegen::cuda
