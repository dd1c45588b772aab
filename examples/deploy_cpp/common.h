// What the runner's parts share: its one error type, the dtype table, and checked reads of
// JSON values (the manifest and the safetensors header are JSON, parsed by tvm-ffi).
#ifndef TVMFRONT_DEPLOY_COMMON_H_
#define TVMFRONT_DEPLOY_COMMON_H_

#include <dlpack/dlpack.h>
#include <tvm/ffi/extra/json.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace deploy {

namespace json = tvm::ffi::json;

// Every problem the runner detects: main prints what() as one line and exits with 1.
struct Fail : std::runtime_error {
  explicit Fail(const std::string& what) : std::runtime_error(what) {}
};

// A tensor dtype as the manifest ("float32") and safetensors ("F32") spell it.
struct DType {
  const char* name;
  const char* safetensors;
  DLDataType dl;
  int64_t bytes;
};

// nullptr for a name not in the table (the caller says which file named it).
const DType* dtype_by_name(const std::string& name);
const DType* dtype_by_safetensors(const std::string& code);

// A tensor the manifest lists: name, shape (-1 for a symbolic dimension), dtype.
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<std::string> symbols;  // per axis: the symbolic name, or "" for a number
  const DType* dtype;
};

std::string shape_str(const std::vector<int64_t>& shape);

// Checked access to parsed JSON; `where` names the value in the error.
json::Object as_object(const json::Value& v, const std::string& where);
json::Array as_array(const json::Value& v, const std::string& where);
std::string as_string(const json::Value& v, const std::string& where);
int64_t as_int(const json::Value& v, const std::string& where);
json::Value member(const json::Object& obj, const char* key, const std::string& where);
bool has_member(const json::Object& obj, const char* key);

// a * b, or Fail when the product leaves int64 (a shape from a hostile file)
int64_t checked_mul(int64_t a, int64_t b, const std::string& where);

}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_COMMON_H_
