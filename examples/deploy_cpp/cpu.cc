#include "cpu.h"

namespace deploy {

std::vector<std::string> missing_cpu_features(const std::vector<std::string>& wanted) {
  std::vector<std::string> missing;
#if defined(__x86_64__)
  // __builtin_cpu_supports takes only string literals, hence one row per feature
#define ROW(llvm, gcc) {llvm, __builtin_cpu_supports(gcc) != 0}
  __builtin_cpu_init();
  const struct {
    const char* name;
    bool present;
  } known[] = {ROW("sse", "sse"),         ROW("sse2", "sse2"),         ROW("sse3", "sse3"),
               ROW("ssse3", "ssse3"),     ROW("sse4.1", "sse4.1"),     ROW("sse4.2", "sse4.2"),
               ROW("popcnt", "popcnt"),   ROW("avx", "avx"),           ROW("avx2", "avx2"),
               ROW("fma", "fma"),         ROW("bmi", "bmi"),           ROW("bmi2", "bmi2"),
               ROW("avx512f", "avx512f"), ROW("avx512bw", "avx512bw"), ROW("avx512dq", "avx512dq"),
               ROW("avx512vl", "avx512vl"), ROW("avx512cd", "avx512cd"),
               ROW("avx512vnni", "avx512vnni"), ROW("avx512bf16", "avx512bf16"),
               ROW("avx512vbmi", "avx512vbmi"), ROW("avx512ifma", "avx512ifma")};
#undef ROW
  for (const std::string& f : wanted)
    for (const auto& k : known)
      if (f == k.name && !k.present) missing.push_back(f);
#else
  (void)wanted;
#endif
  return missing;
}

}  // namespace deploy
