#include "cpu.h"

#include <fstream>
#include <set>
#include <sstream>

namespace deploy {

namespace {
struct Flag {
  const char* llvm;     // the manifest's name (LLVM's)
  const char* cpuinfo;  // /proc/cpuinfo's
};

// tvmfront/runtime/cpu.py's CPU_FLAGS, row for row (tests/test_deploy_cpp.py checks that the
// two tables agree): the manifest lists only these names
#if defined(__x86_64__)
constexpr const char* kCpuinfoKey = "flags";
constexpr Flag kFlags[] = {
    {"sse", "sse"}, {"sse2", "sse2"}, {"sse3", "pni"}, {"ssse3", "ssse3"},
    {"sse4.1", "sse4_1"}, {"sse4.2", "sse4_2"}, {"popcnt", "popcnt"}, {"lzcnt", "abm"},
    {"bmi", "bmi1"}, {"bmi2", "bmi2"}, {"movbe", "movbe"}, {"cx16", "cx16"}, {"f16c", "f16c"},
    {"fma", "fma"}, {"avx", "avx"}, {"avx2", "avx2"}, {"avxvnni", "avx_vnni"}, {"gfni", "gfni"},
    {"avx512f", "avx512f"}, {"avx512cd", "avx512cd"}, {"avx512bw", "avx512bw"},
    {"avx512dq", "avx512dq"}, {"avx512vl", "avx512vl"}, {"avx512ifma", "avx512ifma"},
    {"avx512vbmi", "avx512vbmi"}, {"avx512vbmi2", "avx512_vbmi2"},
    {"avx512vnni", "avx512_vnni"}, {"avx512bitalg", "avx512_bitalg"},
    {"avx512vpopcntdq", "avx512_vpopcntdq"}, {"avx512bf16", "avx512_bf16"},
    {"avx512fp16", "avx512_fp16"}, {"amx-tile", "amx_tile"}, {"amx-int8", "amx_int8"},
    {"amx-bf16", "amx_bf16"},
};
#elif defined(__aarch64__)
constexpr const char* kCpuinfoKey = "Features";
constexpr Flag kFlags[] = {
    {"neon", "asimd"}, {"fp-armv8", "fp"}, {"fullfp16", "asimdhp"}, {"dotprod", "asimddp"},
    {"i8mm", "i8mm"}, {"bf16", "bf16"}, {"sve", "sve"}, {"sve2", "sve2"},
};
#endif

// The flags on the first `key` line of /proc/cpuinfo (none where it cannot be read).
std::set<std::string> cpuinfo_flags(const std::string& key) {
  std::set<std::string> flags;
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string name = line.substr(0, colon);
    name.erase(name.find_last_not_of(" \t") + 1);
    if (name != key) continue;
    std::istringstream words(line.substr(colon + 1));
    for (std::string w; words >> w;) flags.insert(w);
    break;
  }
  return flags;
}
}  // namespace

std::vector<std::string> missing_cpu_features(const std::vector<std::string>& wanted) {
  std::vector<std::string> missing;
#if defined(__x86_64__) || defined(__aarch64__)
  std::set<std::string> flags = cpuinfo_flags(kCpuinfoKey), have;
  for (const Flag& f : kFlags)
    if (flags.count(f.cpuinfo)) have.insert(f.llvm);
  // nothing found means the detection failed (an emulator shows its host's /proc/cpuinfo):
  // then nothing is refused, as tvmfront's Python runtime does
  if (have.empty()) return missing;
  for (const std::string& f : wanted)
    if (!have.count(f)) missing.push_back(f);  // a name not in the table cannot be confirmed
#else
  (void)wanted;
#endif
  return missing;
}

}  // namespace deploy
