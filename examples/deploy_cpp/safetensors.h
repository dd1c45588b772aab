// A strict reader of the safetensors format: an 8-byte little-endian header length, a JSON
// header {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the
// raw little-endian data. Nothing in the file is trusted: the header length, every offset and
// every shape is checked against the file and against what the manifest expects.
#ifndef TVMFRONT_DEPLOY_SAFETENSORS_H_
#define TVMFRONT_DEPLOY_SAFETENSORS_H_

#include <map>
#include <string>
#include <vector>

#include "common.h"

namespace deploy {

struct TensorBytes {
  const DType* dtype;
  std::vector<int64_t> shape;
  const char* data;  // into the file's bytes, which the caller keeps alive
  size_t size;
};

// The tensors of safetensors file `bytes` (named `file` in errors), checked to be exactly
// `expected` by name, shape and dtype.
std::map<std::string, TensorBytes> read_safetensors(const std::string& bytes,
                                                    const std::string& file,
                                                    const std::vector<TensorSpec>& expected);

}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_SAFETENSORS_H_
