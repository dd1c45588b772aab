// A bundle's forward on TVM's C++ runtime: module.so loaded as a Relax VM executable, the
// parameters from params.safetensors placed in CPU tensors, one call per batch. The same
// calls tvm.runtime.vm.VirtualMachine makes from Python: vm_load_executable,
// vm_initialization(device type, device id, allocator), then the function by name. Where the
// library has transform_params and predict_packed (dense weights packed into panels once,
// tvmfront/prepack.py), the runner makes the packed parameters once and calls predict_packed,
// as tvmfront's Python runtime does; predict, which packs them on every call, otherwise.
#ifndef TVMFRONT_DEPLOY_MODEL_H_
#define TVMFRONT_DEPLOY_MODEL_H_

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <string>
#include <vector>

#include "bundle.h"

namespace deploy {

// An output as the runner hands it on: shape, dtype and the raw values in C order.
struct Output {
  std::vector<int64_t> shape;
  DLDataType dtype;
  std::string bytes;
};

class Model {
 public:
  explicit Model(const Bundle& bundle);
  // The forward on every sample of `data` (raw little-endian values of the input dtype; the
  // input file `what` in errors), as InferenceModule.predict runs it: a bundle compiled for
  // any batch size in one call, one compiled for batch B B samples at a time, the last batch
  // padded with copies of its last sample (eval mode: padding never changes a sample's
  // prediction), and its bounds checked first (the input's ids, its samples' count).
  Output predict(const std::string& data, const std::string& what) const;
  // The VM function predict calls: "predict_packed" or "predict".
  const std::string& forward_name() const { return forward_name_; }

 private:
  tvm::ffi::Tensor call(const char* data, size_t size, int64_t samples) const;
  // Fail where `data` (`samples` of them) leaves the manifest's bounds for predict
  void check_bounds(const std::string& data, int64_t samples, const std::string& what) const;

  const Bundle& bundle_;
  tvm::ffi::Module library_;  // module.so, kept loaded while the VM runs its code
  tvm::ffi::Module vm_;
  tvm::ffi::Function forward_;             // predict_packed, or predict
  std::string forward_name_ = "predict";
  std::vector<tvm::ffi::Tensor> tensors_;  // its parameters (packed or not), then buffers
};

// A CPU tensor holding a copy of `bytes` (shape and dtype as given; sizes must agree).
tvm::ffi::Tensor cpu_tensor(const std::vector<int64_t>& shape, const DType& dtype,
                            const char* bytes, size_t size);

}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_MODEL_H_
