#include "model.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/container/array.h>
#include <tvm/ffi/error.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>

#include "elf_check.h"
#include "safetensors.h"

namespace deploy {

namespace ffi = tvm::ffi;

namespace {
constexpr int kPooledAllocator = 2;  // tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR

// 64-byte aligned storage: TVM's kernels assume its default data alignment.
struct AlignedAlloc {
  void AllocData(DLTensor* t) {
    size_t size = ffi::GetDataSize(*t);
    t->data = std::aligned_alloc(64, (size + 63) / 64 * 64 + 64);
    if (!t->data) throw std::bad_alloc();
  }
  void FreeData(DLTensor* t) { std::free(t->data); }
};

// module.so loaded from a private copy of its verified bytes (as bundle.py's load_library):
// nothing that changes the bundle after its hash was checked gets loaded. The copy is removed
// once loaded; the library stays mapped.
ffi::Module load_library(const Bundle& bundle) {
  check_shared_object(bundle.library, bundle.path + ": module.so");
  const char* tmp = std::getenv("TMPDIR");
  std::string dir = std::string(tmp && *tmp ? tmp : "/tmp") + "/tvmfront-lib-XXXXXX";
  if (!mkdtemp(dir.data()))  // mode 0700
    throw Fail("cannot make a private temporary directory in " + dir.substr(0, dir.rfind('/')) +
               " (" + std::strerror(errno) + "); set TMPDIR to a writable one");
  std::string file = dir + "/module.so";
  {
    std::ofstream out(file, std::ios::binary);
    out.write(bundle.library.data(), std::streamsize(bundle.library.size()));
    if (!out) {
      unlink(file.c_str());
      rmdir(dir.c_str());
      throw Fail("cannot write a private copy of module.so in " + dir);
    }
  }
  std::string error;
  std::optional<ffi::Module> lib;
  try {
    lib = ffi::Module::LoadFromFile(file);
  } catch (const ffi::Error& err) {
    error = err.message();
  }
  unlink(file.c_str());
  rmdir(dir.c_str());
  if (!lib)
    throw Fail(bundle.path + ": cannot load module.so (" + error + "); if " + dir.substr(0, dir.rfind('/')) +
               " is mounted noexec, set TMPDIR to a directory that is not");
  return *lib;
}

ffi::Function function(const ffi::Module& mod, const char* name, const std::string& where) {
  ffi::Optional<ffi::Function> f = mod->GetFunction(name, /*query_imports=*/true);
  if (!f.has_value()) throw Fail(where + " has no function '" + name + "'");
  return *f;
}

ffi::Module make_vm(const ffi::Module& library, const Bundle& bundle) {
  std::string where = bundle.path + ": module.so";
  ffi::Module vm = function(library, "vm_load_executable", where)().cast<ffi::Module>();
  function(vm, "vm_initialization", where)(static_cast<int>(kDLCPU), 0, kPooledAllocator);
  return vm;
}
}  // namespace

ffi::Tensor cpu_tensor(const std::vector<int64_t>& shape, const DType& dtype, const char* bytes,
                       size_t size) {
  ffi::Tensor t = ffi::Tensor::FromNDAlloc(AlignedAlloc(), ffi::ShapeView(shape.data(), shape.size()),
                                           dtype.dl, DLDevice{kDLCPU, 0});
  if (ffi::GetDataSize(*t.GetDLTensorPtr()) != size) throw Fail("internal: tensor size mismatch");
  std::memcpy(t.GetDLTensorPtr()->data, bytes, size);
  return t;
}

Model::Model(const Bundle& bundle)
    : bundle_(bundle), library_(load_library(bundle)), vm_(make_vm(library_, bundle)),
      forward_(function(vm_, "predict", bundle.path + ": module.so")) {
  auto params = read_safetensors(bundle.params, bundle.path + "/params.safetensors", bundle.tensors);
  for (const TensorSpec& spec : bundle.tensors) {
    const TensorBytes& t = params.at(spec.name);
    tensors_.push_back(cpu_tensor(t.shape, *t.dtype, t.data, t.size));
  }
  ffi::Optional<ffi::Function> transform = vm_->GetFunction("transform_params", true);
  ffi::Optional<ffi::Function> packed = vm_->GetFunction("predict_packed", true);
  if (transform.has_value() && packed.has_value()) {
    // the parameters predict_packed takes, made once (the MLP 64-256-256-10 at batch 64:
    // predict packs 84K weights on every call)
    std::vector<ffi::AnyView> args(tensors_.begin(), tensors_.begin() + bundle.parameters);
    ffi::Any made;
    transform.value().CallPacked(args.data(), static_cast<int32_t>(args.size()), &made);
    std::vector<ffi::Tensor> out;
    if (auto items = made.as<ffi::Array<ffi::Any>>()) {
      for (const ffi::Any& item : *items) out.push_back(item.cast<ffi::Tensor>());
    } else {
      out.push_back(made.cast<ffi::Tensor>());
    }
    if (out.size() != bundle.parameters)
      throw Fail(bundle.path + ": transform_params made " + std::to_string(out.size()) +
                 " parameters for " + std::to_string(bundle.parameters));
    std::copy(out.begin(), out.end(), tensors_.begin());
    forward_ = packed.value();
    forward_name_ = "predict_packed";
  }
}

ffi::Tensor Model::call(const char* data, size_t size, int64_t samples) const {
  std::vector<int64_t> shape = bundle_.input.shape;
  if (!shape.empty()) shape[0] = samples;
  ffi::Tensor x = cpu_tensor(shape, *bundle_.input.dtype, data, size);
  std::vector<ffi::AnyView> args{x};
  for (const ffi::Tensor& t : tensors_) args.emplace_back(t);
  ffi::Any result;
  forward_.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  auto out = result.as<ffi::Tensor>();
  if (!out) throw Fail(bundle_.path + ": predict returned a " + result.GetTypeKey() + ", not a tensor");
  const DLTensor& t = *out->GetDLTensorPtr();
  if (t.device.device_type != kDLCPU || !ffi::IsContiguous(t))
    throw Fail(bundle_.path + ": predict returned a tensor that is not contiguous on the CPU");
  return *out;
}

void Model::check_bounds(const std::string& data, int64_t samples, const std::string& what) const {
  const TensorSpec& in = bundle_.input;
  const std::string axis0 = in.symbols.empty() ? "" : in.symbols[0];
  for (const auto& [name, need] : bundle_.min_sizes)
    if (name == axis0 && samples < need)
      throw Fail(what + " holds " + std::to_string(samples) + " samples; the bundle's predict needs at "
                 "least " + std::to_string(need) + " along '" + name + "'");
  for (const auto& [name, most] : bundle_.max_sizes)
    if (name == axis0 && samples > most)
      throw Fail(what + " holds " + std::to_string(samples) + " samples; the bundle's predict reads a "
                 "table with rows for at most " + std::to_string(most) + " along '" + name + "'");
  int64_t n = bundle_.id_range;
  if (!n) return;
  const DLDataType& dt = in.dtype->dl;
  if (dt.code != kDLInt && dt.code != kDLUInt)
    throw Fail(bundle_.path + ": manifest gives the " + in.dtype->name + " input an id range");
  int64_t count = int64_t(data.size()) / in.dtype->bytes;
  for (int64_t i = 0; i < count; ++i) {
    const char* p = data.data() + i * in.dtype->bytes;
    int64_t v = 0;
    switch (in.dtype->bytes * 8 + (dt.code == kDLUInt ? 1 : 0)) {
      case 64: { int64_t x; std::memcpy(&x, p, 8); v = x; break; }
      case 32: { int32_t x; std::memcpy(&x, p, 4); v = x; break; }
      case 16: { int16_t x; std::memcpy(&x, p, 2); v = x; break; }
      case 8: v = static_cast<int8_t>(*p); break;
      case 9: v = static_cast<uint8_t>(*p); break;
      default: throw Fail(bundle_.path + ": cannot check the ids of a " + in.dtype->name + " input");
    }
    if (v < 0 || v >= n)
      throw Fail(what + " holds " + std::to_string(v) + " at value " + std::to_string(i) +
                 ", out of range: it indexes a table of " + std::to_string(n) +
                 " rows, so it must lie in 0.." + std::to_string(n - 1));
  }
}

Output Model::predict(const std::string& data, const std::string& what) const {
  const TensorSpec& in = bundle_.input;
  int64_t per = in.dtype->bytes;  // bytes of one sample: the input without axis 0
  for (size_t axis = 1; axis < in.shape.size(); ++axis) per = checked_mul(per, in.shape[axis], what);
  std::string spec = shape_str(in.shape) + " " + in.dtype->name;
  auto wrong_size = [&](const std::string& takes) {
    return Fail(what + " is " + std::to_string(data.size()) + " bytes; the bundle's input " + spec +
                " takes " + takes + " of raw little-endian values");
  };
  Output out;
  if (in.shape.empty()) {  // a scalar input: one value, one call
    if (int64_t(data.size()) != per) throw wrong_size("exactly " + std::to_string(per) + " bytes");
    ffi::Tensor t = call(data.data(), data.size(), 0);
    const DLTensor& d = *t.GetDLTensorPtr();
    out.shape.assign(d.shape, d.shape + d.ndim);
    out.dtype = d.dtype;
    out.bytes.assign(static_cast<const char*>(d.data) + d.byte_offset, ffi::GetDataSize(d));
    return out;
  }
  if (data.empty() || data.size() % per)
    throw wrong_size("a positive multiple of " + std::to_string(per) + " bytes (one sample)");
  int64_t samples = int64_t(data.size()) / per, batch = in.shape[0];
  check_bounds(data, samples, what);
  // a fixed batch runs in pieces only when the output's axis 0 follows the batch: compile
  // traced it at another batch size and wrote 'predict_one_batch' where it does not (an
  // output [4, B], a BatchNorm normalising with the batch's own statistics); bundles from
  // before it, by the output's axis 0 being the batch's size
  const std::vector<int64_t>& out_spec = bundle_.output.shape;
  bool joinable = bundle_.one_batch.empty() &&
                  (batch < 0 || (!out_spec.empty() && out_spec[0] == batch));
  if (!joinable && batch >= 0 && samples != batch)
    throw wrong_size("exactly " + std::to_string(batch * per) + " bytes (the compiled batch of " +
                     std::to_string(batch) + "; batches cannot be joined: " +
                     (bundle_.one_batch.empty() ? "its output's axis 0 is not the batch"
                                                : bundle_.one_batch) + ")");
  int64_t step = batch < 0 || !joinable ? samples : batch;
  checked_mul(step, per, what);  // the padded batch's bytes: a manifest can say anything
  for (int64_t start = 0; start < samples; start += step) {
    int64_t n = std::min(step, samples - start);
    std::string chunk = data.substr(size_t(start * per), size_t(n * per));
    // the last batch padded with copies of its last sample, as predict does: real values
    // (zeros could be out of a model's domain: log(0) under debug_nans, a token id's range)
    while (int64_t(chunk.size()) < step * per) chunk.append(chunk, chunk.size() - size_t(per), size_t(per));
    ffi::Tensor t = call(chunk.data(), chunk.size(), step);
    const DLTensor& d = *t.GetDLTensorPtr();
    if (start == 0) {
      out.shape.assign(d.shape, d.shape + d.ndim);
      out.dtype = d.dtype;
    }
    size_t size = ffi::GetDataSize(d);  // the last, padded batch: its first n rows
    out.bytes.append(static_cast<const char*>(d.data) + d.byte_offset,
                     n == step ? size : size / size_t(step) * size_t(n));
  }
  if (batch >= 0 && joinable && !out.shape.empty()) out.shape[0] = samples;
  return out;
}

}  // namespace deploy
