// A bundle's forward on TVM's C++ runtime: module.so loaded as a Relax VM executable, the
// parameters from params.safetensors placed in CPU tensors, one call per batch. The same
// calls tvm.runtime.vm.VirtualMachine makes from Python: vm_load_executable,
// vm_initialization(device type, device id, allocator), then the function by name.
#ifndef TVMFRONT_DEPLOY_MODEL_H_
#define TVMFRONT_DEPLOY_MODEL_H_

#include <tvm/ffi/container/tensor.h>
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>

#include <string>
#include <vector>

#include "bundle.h"

namespace deploy {

class Model {
 public:
  explicit Model(const Bundle& bundle);
  // The forward on `data` (raw little-endian values of the input dtype, `samples` of them
  // along axis 0); returns the output tensor (on the CPU).
  tvm::ffi::Tensor run(const std::string& data, int64_t samples) const;
  // Input shape for `samples` samples; Fail when the bundle takes another batch size.
  std::vector<int64_t> input_shape(int64_t samples) const;
  int64_t sample_bytes() const;  // bytes of one sample of the input (axis 0 = 1)

 private:
  const Bundle& bundle_;
  tvm::ffi::Module library_;  // module.so, kept loaded while the VM runs its code
  tvm::ffi::Module vm_;
  tvm::ffi::Function forward_;
  std::vector<tvm::ffi::Tensor> tensors_;  // parameters, then buffers
};

// A CPU tensor holding a copy of `bytes` (shape and dtype as given; sizes must agree).
tvm::ffi::Tensor cpu_tensor(const std::vector<int64_t>& shape, const DType& dtype,
                            const char* bytes, size_t size);

}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_MODEL_H_
