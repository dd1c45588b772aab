// The whole runner as one translation unit. Parsing TVM's headers takes most of the compile
// time; parsed once instead of once per file, the build takes about a third as long (7 s
// instead of 17 s of CPU at -O2). Each part stays a file of its own to read.
#include "common.cc"
#include "sha256.cc"
#include "safetensors.cc"
#include "elf_check.cc"
#include "cpu.cc"
#include "bundle.cc"
#include "model.cc"
#include "main.cc"
