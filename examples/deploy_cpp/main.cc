// tvmfront_run: run an exported tvmfront bundle's forward with TVM's C++ runtime, no Python.
//
//   tvmfront_run BUNDLE_DIR INPUT_FILE [--output OUTPUT_FILE] [--time N]
//
// INPUT_FILE holds the input's raw little-endian values in C order, of the dtype the
// bundle's manifest gives ("inputs"), e.g. numpy's x.astype("float32").tofile(path): any
// whole number of samples (a bundle compiled for batch B runs B at a time, as predict does).
// Prints the output's shape, then one line per sample: its index, the index of its largest
// value (the predicted class) and its values. --output writes the output's raw values too.
// --time N runs the forward on the input N more times and prints to stderr the VM function it
// calls (predict_packed: the weights packed once at load) and the median time of a run. Any problem (missing or corrupt bundle file, wrong input size, an error inside
// TVM) is one line on stderr and exit status 1.
#include <sys/stat.h>
#include <tvm/ffi/error.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <vector>

#include "bundle.h"
#include "cpu.h"
#include "model.h"

namespace {
using deploy::Fail;

std::string read_input(const std::string& path) {
  struct stat st;
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Fail(path + ": is a directory, not an input file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Fail(path + ": cannot open the input file (" + std::strerror(errno) + ")");
  std::ostringstream data;
  data << in.rdbuf();
  if (in.bad()) throw Fail(path + ": cannot read the input file");
  return data.str();
}

double value_at(const deploy::Output& out, int64_t i) {
  const char* p = out.bytes.data();
  switch (out.dtype.code) {
    case kDLFloat:
      if (out.dtype.bits == 32) return reinterpret_cast<const float*>(p)[i];
      if (out.dtype.bits == 64) return reinterpret_cast<const double*>(p)[i];
      break;
    case kDLInt:
      if (out.dtype.bits == 32) return reinterpret_cast<const int32_t*>(p)[i];
      if (out.dtype.bits == 64) return static_cast<double>(reinterpret_cast<const int64_t*>(p)[i]);
      break;
  }
  throw Fail("cannot print outputs of this dtype; use --output");
}

void print(const deploy::Output& out) {
  int64_t rows = out.shape.empty() ? 1 : out.shape[0], cols = 1;
  for (size_t d = 1; d < out.shape.size(); ++d) cols *= out.shape[d];
  std::printf("output shape %s\n", deploy::shape_str(out.shape).c_str());
  for (int64_t r = 0; r < rows; ++r) {
    int64_t best = 0;
    for (int64_t c = 1; c < cols; ++c)
      if (value_at(out, r * cols + c) > value_at(out, r * cols + best)) best = c;
    std::printf("%" PRId64 " %" PRId64 ":", r, best);
    for (int64_t c = 0; c < cols; ++c) std::printf(" %.9g", value_at(out, r * cols + c));
    std::printf("\n");
  }
}

int run(int argc, char** argv) {
  std::string bundle_dir, input, output;
  long repeat = 0;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--output" && i + 1 < argc) {
      output = argv[++i];
    } else if (a == "--time" && i + 1 < argc) {
      char* end = nullptr;
      long n = std::strtol(argv[++i], &end, 10);
      if (*end || n < 1 || n > 1000000) throw Fail(std::string("--time takes a count of runs "
                                                              "from 1 to 1000000, not ") + argv[i]);
      repeat = n;
    } else if (a == "--output" || a == "--time") {
      throw Fail(a + (a == "--output" ? " needs a file name" : " needs a count of runs"));
    } else if (a.size() > 1 && a[0] == '-') {
      throw Fail("unknown option " + a);
    } else if (bundle_dir.empty()) {
      bundle_dir = a;
    } else if (input.empty()) {
      input = a;
    } else {
      throw Fail("too many arguments");
    }
  }
  if (input.empty()) {
    std::fprintf(stderr, "usage: %s BUNDLE_DIR INPUT_FILE [--output OUTPUT_FILE] [--time N]\n",
                 argv[0]);
    return 2;
  }
  deploy::Bundle bundle = deploy::read_bundle(bundle_dir);
  std::vector<std::string> missing = deploy::missing_cpu_features(bundle.cpu_features);
  if (!missing.empty()) {
    std::string names;
    for (const auto& f : missing) names += (names.empty() ? "" : ", ") + f;
    throw Fail(bundle_dir + ": the bundle's code needs CPU features " + names +
               ", which this CPU lacks; export it for this CPU");
  }
  std::string data = read_input(input);  // before the library loads: cheap checks first
  deploy::Model model(bundle);
  deploy::Output out = model.predict(data, input);
  if (!output.empty()) {
    std::ofstream f(output, std::ios::binary);
    f.write(out.bytes.data(), std::streamsize(out.bytes.size()));
    if (!f) throw Fail(output + ": cannot write the output file");
  }
  print(out);
  if (repeat > 0) {
    std::vector<double> us;
    for (long i = 0; i < repeat; ++i) {
      auto t0 = std::chrono::steady_clock::now();
      model.predict(data, input);
      us.push_back(std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() -
                                                             t0).count());
    }
    std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
    std::fprintf(stderr, "tvmfront_run: %s, %ld runs: median %.1f us a run\n",
                 model.forward_name().c_str(), repeat, us[us.size() / 2]);
  }
  return 0;
}

// One line: the message up to its first newline (TVM errors carry a traceback after it).
std::string one_line(const std::string& s) { return s.substr(0, s.find('\n')); }
}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const Fail& e) {
    std::fprintf(stderr, "tvmfront_run: error: %s\n", one_line(e.what()).c_str());
  } catch (const tvm::ffi::Error& e) {
    std::fprintf(stderr, "tvmfront_run: error: TVM %s: %s\n", e.kind().c_str(),
                 one_line(e.message()).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tvmfront_run: error: %s\n", one_line(e.what()).c_str());
  }
  return 1;
}
