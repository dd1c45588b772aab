// Whether this CPU has the features a bundle's code needs (manifest 'cpu_features', LLVM
// names): code built for AVX-512 dies of SIGILL on an AVX2 machine at its first call, so the
// runner refuses it with a message first, as tvmfront's Python runtime does.
#ifndef TVMFRONT_DEPLOY_CPU_H_
#define TVMFRONT_DEPLOY_CPU_H_

#include <string>
#include <vector>

namespace deploy {
// The features of `wanted` this CPU lacks, read from /proc/cpuinfo as tvmfront's Python
// runtime reads them (x86-64 and aarch64): a name it does not know counts as lacking; where
// /proc/cpuinfo shows none of the known features (an emulator), nothing is.
std::vector<std::string> missing_cpu_features(const std::vector<std::string>& wanted);
}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_CPU_H_
