#include "common.h"

#include <tvm/ffi/any.h>
#include <tvm/ffi/string.h>

#include <limits>

namespace deploy {

namespace {
const DType kDTypes[] = {
    {"float32", "F32", {kDLFloat, 32, 1}, 4},  {"float64", "F64", {kDLFloat, 64, 1}, 8},
    {"float16", "F16", {kDLFloat, 16, 1}, 2},  {"bfloat16", "BF16", {kDLBfloat, 16, 1}, 2},
    {"int64", "I64", {kDLInt, 64, 1}, 8},      {"int32", "I32", {kDLInt, 32, 1}, 4},
    {"int16", "I16", {kDLInt, 16, 1}, 2},      {"int8", "I8", {kDLInt, 8, 1}, 1},
    {"uint8", "U8", {kDLUInt, 8, 1}, 1},       {"bool", "BOOL", {kDLBool, 8, 1}, 1},
};
}  // namespace

const DType* dtype_by_name(const std::string& name) {
  for (const DType& d : kDTypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DType* dtype_by_safetensors(const std::string& code) {
  for (const DType& d : kDTypes)
    if (code == d.safetensors) return &d;
  return nullptr;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

json::Object as_object(const json::Value& v, const std::string& where) {
  auto obj = v.as<json::Object>();
  if (!obj) throw Fail(where + " is not a JSON object");
  return *obj;
}

json::Array as_array(const json::Value& v, const std::string& where) {
  auto arr = v.as<json::Array>();
  if (!arr) throw Fail(where + " is not a JSON array");
  return *arr;
}

std::string as_string(const json::Value& v, const std::string& where) {
  auto s = v.as<tvm::ffi::String>();
  if (!s) throw Fail(where + " is not a string");
  return std::string(*s);
}

int64_t as_int(const json::Value& v, const std::string& where) {
  // as<>, not try_cast<>: 1.5 or true is not an integer here
  if (v.type_index() != tvm::ffi::TypeIndex::kTVMFFIInt) throw Fail(where + " is not an integer");
  return v.cast<int64_t>();
}

bool has_member(const json::Object& obj, const char* key) {
  return obj.find(tvm::ffi::String(key)) != obj.end();
}

json::Value member(const json::Object& obj, const char* key, const std::string& where) {
  auto it = obj.find(tvm::ffi::String(key));
  if (it == obj.end()) throw Fail(where + " lacks '" + key + "'");
  return (*it).second;
}

int64_t checked_mul(int64_t a, int64_t b, const std::string& where) {
  if (a < 0 || b < 0 || (b != 0 && a > std::numeric_limits<int64_t>::max() / b))
    throw Fail(where + ": size overflows");
  return a * b;
}

}  // namespace deploy
