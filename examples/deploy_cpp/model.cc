#include "model.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/error.h>
#include <unistd.h>

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
}

int64_t Model::sample_bytes() const {
  int64_t n = bundle_.input.dtype->bytes;
  for (size_t axis = 1; axis < bundle_.input.shape.size(); ++axis)
    n = checked_mul(n, bundle_.input.shape[axis], "the input shape");
  return n;
}

std::vector<int64_t> Model::input_shape(int64_t samples) const {
  std::vector<int64_t> shape = bundle_.input.shape;
  if (shape.empty()) return shape;
  if (shape[0] >= 0 && shape[0] != samples)
    throw Fail("the input holds " + std::to_string(samples) + " samples; this bundle is compiled "
               "for batches of exactly " + std::to_string(shape[0]));
  shape[0] = samples;
  return shape;
}

ffi::Tensor Model::run(const std::string& data, int64_t samples) const {
  std::vector<ffi::Tensor> owned{cpu_tensor(input_shape(samples), *bundle_.input.dtype,
                                            data.data(), data.size())};
  std::vector<ffi::AnyView> args{owned[0]};
  for (const ffi::Tensor& t : tensors_) args.emplace_back(t);
  ffi::Any result;
  forward_.CallPacked(args.data(), static_cast<int32_t>(args.size()), &result);
  auto out = result.as<ffi::Tensor>();
  if (!out) throw Fail(bundle_.path + ": predict returned a " + result.GetTypeKey() + ", not a tensor");
  return *out;
}

}  // namespace deploy
