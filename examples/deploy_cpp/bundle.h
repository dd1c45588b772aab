// A bundle as tvmfront exports it (tvmfront/runtime/bundle.py, manifest.py): a directory with
// manifest.json, module.so and params.safetensors (and a training bundle's
// optimizer.safetensors, checked but not used: its forward is the same). Read the way tvmfront's
// Python runtime reads it: the manifest checked first, each file read once as a regular file
// inside the directory and checked against the manifest's SHA-256, and the verified bytes are
// the bytes used.
#ifndef TVMFRONT_DEPLOY_BUNDLE_H_
#define TVMFRONT_DEPLOY_BUNDLE_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common.h"

namespace deploy {

struct Bundle {
  std::string path;
  std::string target_arch;           // "x86_64", "aarch64"
  std::vector<std::string> cpu_features;
  TensorSpec input;                  // the forward's one input (axis 0 may be symbolic)
  TensorSpec output;
  std::string one_batch;             // 'predict_one_batch': why samples run as one batch, or ""
  // predict's bounds (manifest 'min_sizes', 'max_sizes': {dimension: n}; 'id_ranges': the
  // input's values index a table of id_range rows, 0 for none): tvmfront/runtime/bounds.py
  std::vector<std::pair<std::string, int64_t>> min_sizes, max_sizes;
  int64_t id_range = 0;
  std::vector<TensorSpec> tensors;   // the forward's trailing arguments: parameters, buffers
  size_t parameters = 0;             // how many of `tensors` are parameters (the rest: buffers)
  std::string library;               // module.so's verified bytes
  std::string params;                // params.safetensors' verified bytes
};

Bundle read_bundle(const std::string& path);

}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_BUNDLE_H_
