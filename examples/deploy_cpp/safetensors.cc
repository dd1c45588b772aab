#include "safetensors.h"

#include <tvm/ffi/string.h>

#include <algorithm>
#include <set>

namespace deploy {

namespace {
constexpr uint64_t kMaxHeader = 100u << 20;  // the format's own limit (100 MB)

struct Entry {
  std::string name;
  TensorBytes tensor;
  int64_t begin, end;
};

Entry parse_entry(const std::string& name, const json::Value& value, int64_t data_size,
                  const std::string& file) {
  std::string where = file + ": tensor '" + name + "'";
  json::Object obj = as_object(value, where);
  if (obj.size() != 3) throw Fail(where + " must have exactly dtype, shape and data_offsets");
  std::string code = as_string(member(obj, "dtype", where), where + " dtype");
  const DType* dtype = dtype_by_safetensors(code);
  if (!dtype) throw Fail(where + " has unsupported dtype '" + code + "'");
  std::vector<int64_t> shape;
  int64_t count = 1;
  for (const json::Value& d : as_array(member(obj, "shape", where), where + " shape")) {
    int64_t n = as_int(d, where + " shape entry");
    if (n < 0) throw Fail(where + " has a negative dimension");
    shape.push_back(n);
    count = checked_mul(count, n, where);
  }
  json::Array offsets = as_array(member(obj, "data_offsets", where), where + " data_offsets");
  if (offsets.size() != 2) throw Fail(where + " data_offsets must be [begin, end]");
  int64_t begin = as_int(offsets[0], where + " data_offsets");
  int64_t end = as_int(offsets[1], where + " data_offsets");
  if (begin < 0 || begin > end || end > data_size)
    throw Fail(where + " data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
               "] lie outside the file's " + std::to_string(data_size) +
               " data bytes (truncated or corrupt file)");
  int64_t bytes = checked_mul(count, dtype->bytes, where);
  if (end - begin != bytes)
    throw Fail(where + " spans " + std::to_string(end - begin) + " bytes, its shape " +
               shape_str(shape) + " " + dtype->name + " needs " + std::to_string(bytes));
  return {name, {dtype, shape, nullptr, size_t(bytes)}, begin, end};
}
}  // namespace

std::map<std::string, TensorBytes> read_safetensors(const std::string& bytes,
                                                    const std::string& file,
                                                    const std::vector<TensorSpec>& expected) {
  if (bytes.size() < 8)
    throw Fail(file + " is " + std::to_string(bytes.size()) +
               " bytes, too short for a safetensors file (truncated)");
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = n << 8 | static_cast<unsigned char>(bytes[i]);
  if (n > kMaxHeader || n > bytes.size() - 8)
    throw Fail(file + ": header length " + std::to_string(n) + " exceeds the file's " +
               std::to_string(bytes.size() - 8) + " bytes after it (truncated or corrupt file)");
  tvm::ffi::String error;
  json::Value header = json::Parse(tvm::ffi::String(bytes.substr(8, n)), &error);
  if (!error.empty()) throw Fail(file + ": the header is not valid JSON (" + std::string(error) + ")");
  json::Object obj = as_object(header, file + " header");
  const char* data = bytes.data() + 8 + n;
  int64_t data_size = int64_t(bytes.size() - 8 - n);

  std::vector<Entry> entries;
  for (const auto& kv : obj) {
    std::string name = as_string(kv.first, file + " header key");
    if (name == "__metadata__") {
      as_object(kv.second, file + " __metadata__");
      continue;
    }
    entries.push_back(parse_entry(name, kv.second, data_size, file));
  }
  // The data must be the tensors back to back, nothing between, over or after them: what
  // the format requires, and what makes a file cut short or grown fail here.
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.begin < b.begin || (a.begin == b.begin && a.end < b.end); });
  int64_t at = 0;
  for (const Entry& e : entries) {
    if (e.begin != at)
      throw Fail(file + ": tensor '" + e.name + "' starts at byte " + std::to_string(e.begin) +
                 " of the data, expected " + std::to_string(at) + " (overlapping or gapped data)");
    at = e.end;
  }
  if (at != data_size)
    throw Fail(file + ": " + std::to_string(data_size - at) +
               " data bytes follow the last tensor (corrupt file)");

  std::map<std::string, TensorBytes> out;
  for (Entry& e : entries) {
    e.tensor.data = data + e.begin;
    out[e.name] = e.tensor;
  }
  std::set<std::string> wanted;
  for (const TensorSpec& spec : expected) {
    wanted.insert(spec.name);
    auto it = out.find(spec.name);
    if (it == out.end()) throw Fail(file + " lacks tensor '" + spec.name + "'");
    const TensorBytes& t = it->second;
    if (t.shape != spec.shape || t.dtype != spec.dtype)
      throw Fail(file + ": tensor '" + spec.name + "' has shape " + shape_str(t.shape) + " " +
                 t.dtype->name + ", the manifest says " + shape_str(spec.shape) + " " +
                 spec.dtype->name);
  }
  for (const auto& kv : out)
    if (!wanted.count(kv.first))
      throw Fail(file + " holds tensor '" + kv.first + "', which the manifest does not list");
  return out;
}

}  // namespace deploy
