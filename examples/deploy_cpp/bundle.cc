#include "bundle.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <tvm/ffi/string.h>
#include <tvm/runtime/base.h>  // TVM_VERSION: the runtime this program is built against
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "sha256.h"

namespace deploy {

namespace {
constexpr const char* kManifest = "manifest.json";
constexpr const char* kLibrary = "module.so";
constexpr const char* kParams = "params.safetensors";
constexpr const char* kOptimizer = "optimizer.safetensors";
constexpr off_t kMaxManifest = 16 << 20;  // as bundle.py: a manifest is a few kB

// Bytes of regular file `name` in the directory open as `dir_fd`. O_NOFOLLOW refuses a
// symlink, O_NONBLOCK keeps a FIFO from blocking the open; the type is checked on the open
// descriptor, so it cannot change in between.
std::string read_file(int dir_fd, const std::string& dir, const char* name, off_t limit) {
  int fd = openat(dir_fd, name, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) throw Fail(dir + ": missing file " + name);
    throw Fail(dir + ": cannot open " + name + " as a regular file (" + std::strerror(errno) + ")");
  }
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    throw Fail(dir + ": " + name + " is not a regular file");
  }
  if (limit > 0 && st.st_size > limit) {
    close(fd);
    throw Fail(dir + ": " + name + " is " + std::to_string(st.st_size) + " bytes, more than a " +
               name + " can be");
  }
  std::string data;
  char chunk[1 << 16];
  for (;;) {
    ssize_t n = read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int err = errno;
      close(fd);
      throw Fail(dir + ": cannot read " + name + " (" + std::strerror(err) + ")");
    }
    if (n == 0) break;
    data.append(chunk, size_t(n));
  }
  close(fd);
  return data;
}

// least: the smallest size a numbered dimension may have (an input's: 1, as compile asks)
TensorSpec tensor_spec(const json::Value& v, const std::string& where, bool named,
                       int64_t least = 0) {
  json::Object obj = as_object(v, where);
  TensorSpec spec;
  if (named) spec.name = as_string(member(obj, "name", where), where + " name");
  std::string dtype = as_string(member(obj, "dtype", where), where + " dtype");
  spec.dtype = dtype_by_name(dtype);
  if (!spec.dtype) throw Fail(where + " has dtype " + dtype + ", which this runner does not handle");
  for (const json::Value& d : as_array(member(obj, "shape", where), where + " shape")) {
    if (auto sym = d.as<tvm::ffi::String>()) {  // a symbolic dimension ("batch")
      spec.shape.push_back(-1);
      spec.symbols.emplace_back(*sym);
    } else {
      int64_t n = as_int(d, where + " shape entry");
      if (n < least)
        throw Fail(where + " has a dimension of " + std::to_string(n) + "; " +
                   (least ? "an input has at least one element along each axis"
                          : "sizes are not negative"));
      spec.shape.push_back(n);
      spec.symbols.emplace_back();
    }
  }
  return spec;
}

std::vector<TensorSpec> tensor_list(const json::Object& manifest, const char* key,
                                    const std::string& where) {
  std::vector<TensorSpec> out;
  if (!has_member(manifest, key)) return out;
  for (const json::Value& v : as_array(member(manifest, key, where), where + " '" + key + "'")) {
    out.push_back(tensor_spec(v, where + " '" + key + "' entry", true));
    if (out.back().symbols.end() != std::find_if(out.back().symbols.begin(), out.back().symbols.end(),
                                                 [](const std::string& s) { return !s.empty(); }))
      throw Fail(where + ": parameter '" + out.back().name + "' has a symbolic dimension");
  }
  return out;
}

// predict's entries of the manifest's 'min_sizes', 'max_sizes' and 'id_ranges' ({kind:
// {function: {key: n}}}); the one input's id range is keyed by its name, "x"
void read_bounds(const json::Object& m, Bundle& b, const std::string& where) {
  for (const char* kind : {"min_sizes", "max_sizes", "id_ranges"}) {
    if (!has_member(m, kind)) continue;
    std::string at = where + " '" + kind + "'";
    json::Object functions = as_object(member(m, kind, where), at);
    if (!has_member(functions, "predict")) continue;
    for (const auto& [key, value] : as_object(member(functions, "predict", at), at + " 'predict'")) {
      std::string name = as_string(key, at + " key");
      int64_t n = as_int(value, at + " '" + name + "'");
      if (n < (std::string(kind) == "max_sizes" ? 0 : 1))
        throw Fail(at + " '" + name + "' is " + std::to_string(n));
      if (std::string(kind) == "id_ranges") {
        if (name != "x")
          throw Fail(at + " names input '" + name + "'; this bundle's one input is 'x'");
        b.id_range = n;
      } else {
        (std::string(kind) == "min_sizes" ? b.min_sizes : b.max_sizes).emplace_back(name, n);
      }
    }
  }
}

// "0.27.0.post1" -> "0.27.0": a post release rebuilds the same runtime
std::string release(const std::string& version) {
  size_t cut = version.find_first_of("+");
  std::string v = version.substr(0, cut);
  size_t post = v.find(".post");
  return post == std::string::npos ? v : v.substr(0, post);
}

const char* this_arch() {
#if defined(__x86_64__)
  return "x86_64";
#elif defined(__aarch64__)
  return "aarch64";
#else
  return "unknown";
#endif
}

void verify(const std::string& dir, const json::Object& files, const char* name,
            const std::string& data) {
  std::string want = as_string(member(files, name, dir + ": manifest 'files'"),
                               dir + ": the manifest's hash of " + name);
  std::string got = sha256_hex(data);
  if (got != want)
    throw Fail(dir + ": " + name + " is corrupt or was modified (sha256 " + got.substr(0, 12) +
               "... does not match the manifest's " + want.substr(0, 12) + "...)");
}
}  // namespace

Bundle read_bundle(const std::string& path) {
  int dir_fd = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) throw Fail(path + ": no such bundle directory (" + std::strerror(errno) + ")");
  struct Closer {
    int fd;
    ~Closer() { close(fd); }
  } closer{dir_fd};

  Bundle b;
  b.path = path;
  std::string text;
  try {
    text = read_file(dir_fd, path, kManifest, kMaxManifest);
  } catch (const Fail&) {
    if (faccessat(dir_fd, kManifest, F_OK, AT_SYMLINK_NOFOLLOW) != 0)
      throw Fail(path + ": missing " + kManifest + "; not a tvmfront bundle");
    throw;
  }
  tvm::ffi::String error;
  json::Value parsed = json::Parse(tvm::ffi::String(text), &error);
  if (!error.empty()) throw Fail(path + ": unreadable manifest (" + std::string(error) + ")");
  std::string where = path + ": manifest";
  json::Object m = as_object(parsed, where);
  if (!has_member(m, "format") || m.at(tvm::ffi::String("format")).as<tvm::ffi::String>() !=
                                      std::optional<tvm::ffi::String>("tvmfront-bundle"))
    throw Fail(path + ": not a tvmfront bundle manifest");
  int64_t version = as_int(member(m, "format_version", where), where + " 'format_version'");
  if (version != 1)
    throw Fail(path + ": bundle format version " + std::to_string(version) +
               ", this runner reads version 1");
  std::string kind = as_string(member(m, "kind", where), where + " 'kind'");
  // a training bundle holds the same forward (predict) and parameters, plus optimizer state
  if (kind != "inference" && kind != "training")
    throw Fail(path + ": unknown module kind '" + kind + "'");

  std::string tvm_version = as_string(member(m, "tvm_version", where), where + " 'tvm_version'");
  if (release(tvm_version) != release(TVM_VERSION))
    throw Fail(path + ": built with TVM " + tvm_version + ", this runner uses TVM " TVM_VERSION
               "; rebuild the bundle or the runner");
  std::string target_kind = as_string(member(m, "target_kind", where), where + " 'target_kind'");
  if (target_kind != "llvm")
    throw Fail(path + ": compiled for " + target_kind + "; this runner runs CPU (llvm) bundles");
  b.target_arch = as_string(member(m, "target_arch", where), where + " 'target_arch'");
  if (b.target_arch != this_arch())
    throw Fail(path + ": compiled for " + b.target_arch + ", this runner is built for " +
               this_arch() + ": export the bundle for this CPU, or build the runner for " +
               b.target_arch);
  if (has_member(m, "cpu_features"))
    for (const json::Value& f : as_array(member(m, "cpu_features", where), where + " 'cpu_features'"))
      b.cpu_features.push_back(as_string(f, where + " 'cpu_features' entry"));

  json::Value inputs = member(m, "inputs", where);
  if (!inputs.as<json::Object>())
    throw Fail(path + ": the forward takes several inputs; this runner feeds one");
  b.input = tensor_spec(inputs, where + " 'inputs'", false, 1);
  b.input.name = "x";
  for (size_t axis = 1; axis < b.input.shape.size(); ++axis)
    if (b.input.shape[axis] < 0)
      throw Fail(path + ": input dimension '" + b.input.symbols[axis] + "' (axis " +
                 std::to_string(axis) + ") is symbolic; this runner sizes axis 0 only");
  // (a dimension may be an expression of symbolic names, "batch * 8": any string is symbolic)
  b.output = tensor_spec(member(m, "outputs", where), where + " 'outputs'", false);
  if (has_member(m, "predict_one_batch"))
    b.one_batch = as_string(member(m, "predict_one_batch", where), where + " 'predict_one_batch'");
  read_bounds(m, b, where);
  b.tensors = tensor_list(m, "parameters", where);
  b.parameters = b.tensors.size();
  for (TensorSpec& t : tensor_list(m, "buffers", where)) b.tensors.push_back(t);

  // exactly the files of its kind, each hashed (as manifest.py checks); the optimizer state
  // is checked too (a corrupt bundle is refused as a whole) but not kept
  bool training = kind == "training";
  json::Object files = as_object(member(m, "files", where), where + " 'files'");
  if (files.size() != (training ? 3u : 2u) || !has_member(files, kLibrary) ||
      !has_member(files, kParams) || (training && !has_member(files, kOptimizer)))
    throw Fail(path + ": a " + kind + " bundle lists exactly module.so, params.safetensors" +
               (training ? " and optimizer.safetensors" : ""));
  b.library = read_file(dir_fd, path, kLibrary, 0);
  verify(path, files, kLibrary, b.library);
  b.params = read_file(dir_fd, path, kParams, 0);
  verify(path, files, kParams, b.params);
  if (training) verify(path, files, kOptimizer, read_file(dir_fd, path, kOptimizer, 0));
  return b;
}

}  // namespace deploy
