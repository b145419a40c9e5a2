// pybind11 bindings: typed requests and raw buffers in, bytes out, GIL released around the work.
// Tensors arrive as TensorView objects (built by Python's tensors.GroupView.native()), encode
// requests as EncodeRequest objects of GroupSpec (built by cachegen.plan); _core.pyi types them.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstring>
#include <optional>
#include <string>

#include "../src/codec.hpp"
#include "../src/cpu_path.hpp"
#include "../src/crc32c.hpp"
#include "../src/format.hpp"
#include "../src/importance.hpp"
#include "../src/parallel.hpp"
#ifdef CACHEGEN_WITH_CUDA
#include "cuda/cuda_codec.hpp"
#endif

namespace py = pybind11;
using namespace cachegen;

namespace {

// Step weights arrive as float32 arrays (one memcpy; other dtypes are cast the way numpy does).
using Floats = py::array_t<float, py::array::c_style | py::array::forcecast>;
using Doubles = py::array_t<double, py::array::c_style | py::array::forcecast>;

std::vector<float> float32s(const std::optional<Floats>& w) {
  if (!w) return {};
  if (w->ndim() != 1) throw InputError("step weights must be a 1-D float32 array");
  return std::vector<float>(w->data(), w->data() + w->size());
}

// Directions for the core to read in place: the request shares the array (and releases it under
// the GIL) instead of copying a float per key element and direction, twice.
Shaping shaping(uint32_t count, const std::optional<Floats>& dirs,
                const std::optional<Floats>& diag) {
  Shaping s{count, nullptr, 0, float32s(diag)};
  if (!dirs) return s;
  if (dirs->ndim() != 1) throw InputError("shaping directions must be a 1-D float32 array");
  std::shared_ptr<Floats> keep(new Floats(*dirs), [](Floats* a) {
    py::gil_scoped_acquire gil;
    delete a;
  });
  s.dirs = std::shared_ptr<const float>(keep, keep->data());
  s.dirs_size = (size_t)keep->size();
  return s;
}

DType to_dtype(int code) {
  if (code < 0 || code > 255 || !valid_dtype((uint8_t)code))
    throw InputError("unknown dtype code " + std::to_string(code));
  return (DType)code;
}

TensorView make_view(uintptr_t address, int dtype, uint32_t tokens, uint32_t heads,
                     uint32_t head_dim, const std::array<int64_t, 3>& strides,
                     uintptr_t block_table, uint32_t block_size, uint32_t num_blocks,
                     int64_t s_block) {
  return TensorView{reinterpret_cast<void*>(address),
                    to_dtype(dtype),
                    tokens,
                    heads,
                    head_dim,
                    strides[0],
                    strides[1],
                    strides[2],
                    reinterpret_cast<const int32_t*>(block_table),
                    block_size,
                    num_blocks,
                    s_block};
}

GroupSpec make_spec(const TensorView& view, int quantizer, float param, uint32_t max_tables,
                    const std::optional<Floats>& token_weights,
                    const std::optional<Floats>& channel_weights, uint32_t raw_rows, bool center,
                    bool overflow, uint32_t shape_count, const std::optional<Floats>& shape_dirs,
                    const std::optional<Floats>& shape_diag) {
  if (quantizer < 0 || quantizer > 255 || !valid_quantizer((uint8_t)quantizer))
    throw InputError("unknown quantizer id");
  return {view,
          (Quantizer)quantizer,
          param,
          max_tables,
          {float32s(token_weights), float32s(channel_weights), center, overflow,
           shaping(shape_count, shape_dirs, shape_diag)},
          raw_rows};
}

// The transform record of a request: None, or (32-byte sha256 digest, context position).
TransformRecord transform_record(const py::object& t) {
  TransformRecord r;
  if (t.is_none()) return r;
  const auto pair = t.cast<std::pair<py::bytes, uint64_t>>();
  const std::string digest = pair.first;
  if (digest.size() != r.digest.size()) throw InputError("transform digest must be 32 bytes");
  std::memcpy(r.digest.data(), digest.data(), r.digest.size());
  r.position = pair.second;
  return r;
}

EncodeRequest make_request(std::vector<GroupSpec> groups, int dtype, int layout, int level,
                           uint32_t segment_symbols, uint32_t flags, int threads,
                           const py::object& transform) {
  EncodeRequest req;
  req.groups = std::move(groups);
  req.dtype = to_dtype(dtype);
  if (layout < 0 || layout > 1) throw InputError("unknown layout");
  req.layout = (Layout)layout;
  if (level < 0 || level > 255) throw InputError("level out of range");
  req.level = (uint8_t)level;
  if (segment_symbols < 1024) throw InputError("segment_symbols must be >= 1024");
  req.segment_symbols = segment_symbols;
  if (flags & ~(kKnownFlags & ~kFlagTransform)) throw InputError("unknown flags");
  req.flags = flags | (transform.is_none() ? 0 : kFlagTransform);
  req.transform = transform_record(transform);
  req.threads = threads;
  return req;
}

// A parsed blob that keeps the Python buffer it points into alive.
struct Blob {
  py::buffer owner;
  py::buffer_info info;
  ParsedBlob parsed;

  // verify = false leaves the checksum to whoever consumes the blob (a GPU decode checks it on
  // the device); a host decode or entropy_stats then checks it first.
  explicit Blob(py::buffer b, bool verify) : owner(b), info(b.request()) {
    // A strided view (mv[::-1], mv[::2]) is not the bytes it points at: refused, not read.
    const bool contiguous = info.ndim == 0 || info.size <= 1 || info.strides[0] == 1;
    if (info.ndim > 1 || info.itemsize != 1 || !contiguous)
      throw InputError("blob must be a C-contiguous 1-D byte buffer");
    const auto* data = static_cast<const uint8_t*>(info.ptr);
    const size_t size = (size_t)info.size;
    py::gil_scoped_release nogil;
    parsed = parse_blob(data, size, verify);
  }
  const uint8_t* data() const { return static_cast<const uint8_t*>(info.ptr); }
  void ensure_verified() {
    if (parsed.checksum_verified) return;
    verify_checksum(data(), (size_t)info.size);
    parsed.checksum_verified = true;
  }
};

py::dict group_dict(const Group& g) {
  py::dict d;
  d["tokens"] = g.desc.tokens;
  d["heads"] = g.desc.heads;
  d["head_dim"] = g.desc.head_dim;
  d["segment_tokens"] = g.desc.seg_tokens;
  d["segments"] = g.desc.num_segments;
  d["quantizer"] = (int)g.desc.quantizer;
  d["param"] = g.desc.param;
  d["tables"] = g.tables.tables.size();
  d["max_symbol"] = g.quant.max_symbol;
  d["raw_rows"] = g.quant.raw_rows;
  d["overflow"] = g.quant.overflow.size();
  return d;
}

py::dict parsed_info(const ParsedBlob& p, size_t total_bytes) {
  py::dict d;
  d["version"] = p.header.version;
  d["num_layers"] = p.header.num_layers;
  d["dtype"] = (int)p.header.dtype;
  d["layout"] = (int)p.header.layout;
  d["level"] = p.header.level;
  d["codec"] = p.header.codec;
  d["segments"] = p.header.num_segments;
  d["payload_bytes"] = p.payload_bytes;
  d["total_bytes"] = total_bytes;
  d["checksum"] = p.checksum;
  d["flags"] = p.header.flags;
  const TransformRecord& t = p.header.transform;
  d["transform"] =
      p.header.flags & kFlagTransform
          ? py::make_tuple(py::bytes((const char*)t.digest.data(), t.digest.size()), t.position)
          : py::object(py::none());
  py::list groups;
  for (const Group& g : p.groups) groups.append(group_dict(g));
  d["groups"] = groups;
  return d;
}

py::dict blob_info(const Blob& b) { return parsed_info(b.parsed, (size_t)b.info.size); }

// Runs encode_fn(alloc) without the GIL; the blob is written straight into the bytes object
// that Python receives.
template <typename F>
py::object encode_to_bytes(F&& encode_fn) {
  py::object result;
  {
    py::gil_scoped_release nogil;
    encode_fn([&](size_t n) {
      py::gil_scoped_acquire gil;
      result = py::reinterpret_steal<py::object>(PyBytes_FromStringAndSize(nullptr, (Py_ssize_t)n));
      if (!result) throw py::error_already_set();
      return reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(result.ptr()));
    });
  }
  return result;
}

py::object encode_py(const EncodeRequest& req) {
  return encode_to_bytes([&](const BlobAllocator& alloc) { encode(req, alloc); });
}

#ifdef CACHEGEN_WITH_CUDA
// GPU variants: views hold device pointers; work is queued on `stream` of `device`.
// device_alloc: None for a host bytes blob, else a callable (n) -> address of n bytes of device
// memory on `device` (the caller keeps the object that owns them), which receives the blob.
py::object encode_cuda_py(const EncodeRequest& req, int device, uintptr_t stream,
                          py::object device_alloc) {
  if (device_alloc.is_none())
    return encode_to_bytes(
        [&](const BlobAllocator& alloc) { cuda::encode(req, device, stream, alloc); });
  py::gil_scoped_release nogil;
  cuda::encode(
      req, device, stream,
      [&](size_t n) {
        py::gil_scoped_acquire gil;
        return reinterpret_cast<uint8_t*>(device_alloc(n).cast<uintptr_t>());
      },
      true);
  return py::none();
}

// A blob in device memory, parsed from its head; decoded in place.
struct DeviceParsed {
  ParsedBlob parsed;
  uintptr_t address;
  size_t size;
  int device;
};

DeviceParsed parse_device_py(uintptr_t address, size_t size, int device, uintptr_t stream) {
  py::gil_scoped_release nogil;
  DeviceParsed d{{}, address, size, device};
  d.parsed =
      cuda::parse_device_blob(reinterpret_cast<const uint8_t*>(address), size, device, stream);
  return d;
}

std::unique_ptr<cuda::DeviceBlob> resident_py(const DeviceParsed& d, uintptr_t stream) {
  py::gil_scoped_release nogil;
  return std::make_unique<cuda::DeviceBlob>(d.parsed, reinterpret_cast<const uint8_t*>(d.address),
                                            d.size, d.device, stream, true);
}

py::dict timings_py(const std::string& which) {
  py::dict d;
  for (const auto& [stage, ms] : cuda::last_timings(which)) d[py::str(stage)] = ms;
  return d;
}

std::unique_ptr<cuda::DeviceBlob> to_device_py(const Blob& b, int device, uintptr_t stream) {
  py::gil_scoped_release nogil;
  return std::make_unique<cuda::DeviceBlob>(b.parsed, b.data(), (size_t)b.info.size, device,
                                            stream);
}

void decode_cuda_py(const cuda::DeviceBlob& d, const std::vector<TensorView>& outs,
                    uintptr_t stream) {
  py::gil_scoped_release nogil;
  d.decode_into(outs, stream);
}
#endif

template <typename T>
py::bytes as_bytes(const std::vector<T>& v) {
  return py::bytes(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// Per group: (symbols int8, a per token fp32, b per channel fp32, o per channel fp32, raw rows
// fp32) as bytes.
py::list quantize_py(const EncodeRequest& req) {
  std::vector<Quantized> q;
  {
    py::gil_scoped_release nogil;
    q = quantize(req);
  }
  py::list out;
  for (const Quantized& g : q) {
    std::vector<int32_t> overflow;  // (token, channel, symbol) triples
    for (const Overflow& e : g.params.overflow)
      overflow.insert(overflow.end(), {(int32_t)e.token, (int32_t)e.channel, e.symbol});
    out.append(py::make_tuple(as_bytes(g.symbols), as_bytes(g.params.a), as_bytes(g.params.b),
                              as_bytes(g.params.o), as_bytes(g.params.raw), as_bytes(overflow)));
  }
  return out;
}

// Float32 bytes of one K group's RoPE pair magnitudes (see src/importance.hpp).
py::bytes key_magnitudes_py(const TensorView& keys, int threads) {
  std::vector<float> mag;
  {
    py::gil_scoped_release nogil;
    mag = key_pair_magnitudes(keys, threads);
  }
  return as_bytes(mag);
}

// Float64 bytes of one K group's importance scores (see src/importance.hpp).
py::bytes key_scores_py(const TensorView& keys, const Doubles& coefficients,
                        const std::optional<Floats>& inv_freq, uint64_t first, int threads) {
  if (coefficients.ndim() != 1) throw InputError("importance coefficients must be 1-D");
  std::vector<double> c(coefficients.data(), coefficients.data() + coefficients.size());
  const std::vector<float> freq = float32s(inv_freq);
  std::vector<double> scores;
  {
    py::gil_scoped_release nogil;
    scores = key_scores(keys, c, freq, first, threads);
  }
  return as_bytes(scores);
}

// Float64 bytes of one K group's per-pair sums of squared magnitudes (src/importance.hpp).
py::bytes key_square_sums_py(const TensorView& keys, uint32_t skip, int threads) {
  std::vector<double> sums;
  {
    py::gil_scoped_release nogil;
    sums = key_pair_square_sums(keys, skip, threads);
  }
  return as_bytes(sums);
}

#ifdef CACHEGEN_WITH_CUDA
py::bytes key_square_sums_cuda_py(const TensorView& keys, uint32_t skip, int device,
                                  uintptr_t stream) {
  std::vector<double> sums;
  {
    py::gil_scoped_release nogil;
    sums = cuda::key_pair_square_sums(keys, skip, device, stream);
  }
  return as_bytes(sums);
}
#endif

void decode_py(Blob& b, const std::vector<TensorView>& outs, int threads) {
  py::gil_scoped_release nogil;
  b.ensure_verified();
  decode_into(b.parsed, b.data(), outs, threads);
}

py::dict stats_py(Blob& b, int threads) {
  EntropyStats s;
  {
    py::gil_scoped_release nogil;
    b.ensure_verified();
    s = entropy_stats(b.parsed, b.data(), threads);
  }
  py::dict d;
  d["ideal_bits"] = s.ideal_bits;
  d["word_bytes"] = s.word_bytes;
  d["state_bytes"] = s.state_bytes;
  d["side_bytes"] = s.side_bytes;
  d["symbols"] = s.symbols;
  return d;
}

py::dict build_info_py() {
  py::dict d;
  d["backend"] = "cpu";
  d["crc32c"] = crc32c_backend();
  d["convert"] = convert_backend();
  d["cpu_decode"] = cpu_path_name(cpu_path());
  py::list paths;
  for (CpuPath p : available_cpu_paths()) paths.append(cpu_path_name(p));
  d["cpu_paths"] = paths;
  d["format_version"] = kFormatVersion;
  d["lanes"] = rans::kLanes;
  d["prob_bits"] = rans::kProbBits;
  d["default_threads"] = resolve_threads(0);
  d["max_threads"] = kMaxThreads;
#ifdef CACHEGEN_WITH_CUDA
  d["cuda_compiled"] = true;
  d["cuda_available"] = cuda::available();
#else
  d["cuda_compiled"] = false;
  d["cuda_available"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "cachegen native core";
  static py::exception<FormatError> format_error(m, "FormatError", PyExc_ValueError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      py::set_error(format_error, e.what());
    } catch (const InputError& e) {
      py::set_error(PyExc_ValueError, e.what());
    }
  });
  // Classes are module-local: a second build of the module (bench/lib/basebuild A/B runs) can
  // load beside this one.
  py::class_<TensorView>(m, "TensorView", py::module_local(),
                         "One K or V tensor in memory: element (token, head, dim) at address + "
                         "token offset + head*s_head + dim*s_dim (strides in elements); a paged "
                         "view finds token t in block block_table[t // block_size].")
      .def(py::init(&make_view), py::arg("address"), py::arg("dtype"), py::arg("tokens"),
           py::arg("heads"), py::arg("head_dim"), py::arg("strides"), py::arg("block_table") = 0,
           py::arg("block_size") = 0, py::arg("num_blocks") = 0, py::arg("s_block") = 0)
      .def_property_readonly(
          "address", [](const TensorView& v) { return reinterpret_cast<uintptr_t>(v.data); })
      .def_property_readonly("dtype", [](const TensorView& v) { return (int)v.dtype; })
      .def_readonly("tokens", &TensorView::tokens)
      .def_readonly("heads", &TensorView::heads)
      .def_readonly("head_dim", &TensorView::head_dim)
      .def_property_readonly(
          "strides",
          [](const TensorView& v) { return std::array<int64_t, 3>{v.s_token, v.s_head, v.s_dim}; })
      .def_property_readonly(
          "block_table",
          [](const TensorView& v) { return reinterpret_cast<uintptr_t>(v.block_table); })
      .def_readonly("block_size", &TensorView::block_size)
      .def_readonly("num_blocks", &TensorView::num_blocks)
      .def_readonly("s_block", &TensorView::s_block);
  py::class_<GroupSpec>(m, "GroupSpec", py::module_local(), "How to code one (layer, K/V) group.")
      .def(py::init(&make_spec), py::arg("view"), py::arg("quantizer"), py::arg("param"),
           py::arg("max_tables"), py::arg("token_weights") = py::none(),
           py::arg("channel_weights") = py::none(), py::arg("raw_rows") = 0,
           py::arg("center") = false, py::arg("overflow") = false, py::arg("shape_count") = 0,
           py::arg("shape_dirs") = py::none(), py::arg("shape_diag") = py::none())
      .def_readonly("view", &GroupSpec::view)
      .def_property_readonly("quantizer", [](const GroupSpec& s) { return (int)s.quantizer; })
      .def_readonly("param", &GroupSpec::param)
      .def_readonly("max_tables", &GroupSpec::max_tables)
      .def_property_readonly("token_weights", [](const GroupSpec& s) { return s.weights.token; })
      .def_property_readonly("channel_weights",
                             [](const GroupSpec& s) { return s.weights.channel; })
      .def_readonly("raw_rows", &GroupSpec::raw_rows)
      .def_property_readonly("center", [](const GroupSpec& s) { return s.weights.center; })
      .def_property_readonly("overflow", [](const GroupSpec& s) { return s.weights.overflow; })
      .def_property_readonly("shape_count",
                             [](const GroupSpec& s) { return s.weights.shape.count; });
  py::class_<EncodeRequest>(m, "EncodeRequest", py::module_local(),
                            "Groups (K then V per layer) and blob header.")
      .def(py::init(&make_request), py::arg("groups"), py::arg("dtype"), py::arg("layout"),
           py::arg("level"), py::arg("segment_symbols"), py::arg("flags") = 0,
           py::arg("threads") = 0, py::arg("transform") = py::none())
      .def_readonly("groups", &EncodeRequest::groups)
      .def_property_readonly("dtype", [](const EncodeRequest& r) { return (int)r.dtype; })
      .def_property_readonly("layout", [](const EncodeRequest& r) { return (int)r.layout; })
      .def_readonly("level", &EncodeRequest::level)
      .def_readonly("segment_symbols", &EncodeRequest::segment_symbols)
      .def_readonly("flags", &EncodeRequest::flags)
      .def_readonly("threads", &EncodeRequest::threads);
  py::class_<Blob>(m, "Blob", py::module_local())
      .def(py::init<py::buffer, bool>(), py::arg("blob"), py::arg("verify") = true)
      .def("info", &blob_info)
      .def("decode_into", &decode_py, py::arg("outs"), py::arg("threads") = 0)
      .def("entropy_stats", &stats_py, py::arg("threads") = 0);
  m.def("encode", &encode_py, py::arg("request"));
  m.def("quantize", &quantize_py, py::arg("request"));
  m.def("key_magnitudes", &key_magnitudes_py, py::arg("keys"), py::arg("threads") = 0);
  m.def("key_scores", &key_scores_py, py::arg("keys"), py::arg("coefficients"),
        py::arg("inv_freq") = py::none(), py::arg("first") = 0, py::arg("threads") = 0);
  m.def("key_square_sums", &key_square_sums_py, py::arg("keys"), py::arg("skip"),
        py::arg("threads") = 0);
  m.def("build_info", &build_info_py);
#ifdef CACHEGEN_WITH_CUDA
  py::class_<cuda::DeviceBlob>(m, "DeviceBlob", py::module_local())
      .def("decode_into", &decode_cuda_py, py::arg("outs"), py::arg("stream"));
  m.def("to_device", &to_device_py, py::arg("blob"), py::arg("device"), py::arg("stream"));
  m.def("encode_cuda", &encode_cuda_py, py::arg("request"), py::arg("device"), py::arg("stream"),
        py::arg("device_alloc") = py::none());
  py::class_<DeviceParsed>(m, "DeviceParsed", py::module_local())
      .def("info", [](const DeviceParsed& d) { return parsed_info(d.parsed, d.size); })
      .def_readonly("device", &DeviceParsed::device)
      .def("to_device", &resident_py, py::arg("stream"),
           "The blob, in place, with its decode plan; its checksum is checked on the device.");
  m.def("parse_device", &parse_device_py, py::arg("address"), py::arg("size"), py::arg("device"),
        py::arg("stream"), "Parse a blob in device memory (head and trailer copied to the host).");
  m.def("key_square_sums_cuda", &key_square_sums_cuda_py, py::arg("keys"), py::arg("skip"),
        py::arg("device"), py::arg("stream"));
  m.def("cuda_device_name", &cuda::device_name, py::arg("device") = 0);
  m.def("cuda_timings", &timings_py, py::arg("which"),
        "Host wall-clock stages (ms) of the last GPU 'encode', 'decode' (blob to device) or "
        "'decode_kernels' call.");
#endif
}
