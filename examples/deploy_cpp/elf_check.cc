#include "elf_check.h"

#include <elf.h>

#include <cstring>

#include "common.h"

namespace deploy {

namespace {
#if defined(__x86_64__)
constexpr int kMachine = EM_X86_64;
#elif defined(__aarch64__)
constexpr int kMachine = EM_AARCH64;
#else
constexpr int kMachine = -1;
#endif

// [offset, offset + size) inside a file of `total` bytes, without overflow
bool inside(uint64_t offset, uint64_t size, uint64_t total) {
  return offset <= total && size <= total - offset;
}
}  // namespace

void check_shared_object(const std::string& data, const std::string& what) {
  Elf64_Ehdr eh;
  if (data.size() < sizeof eh) throw Fail(what + " is too short for a shared library (truncated)");
  std::memcpy(&eh, data.data(), sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) throw Fail(what + " is not an ELF file");
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_ident[EI_DATA] != ELFDATA2LSB)
    throw Fail(what + " is not a 64-bit little-endian ELF file");
  if (eh.e_type != ET_DYN) throw Fail(what + " is not a shared library");
  if (kMachine >= 0 && eh.e_machine != kMachine)
    throw Fail(what + " is a library for another CPU (ELF machine " + std::to_string(eh.e_machine) + ")");
  uint64_t total = data.size();
  if (eh.e_phentsize != sizeof(Elf64_Phdr) ||
      !inside(eh.e_phoff, uint64_t(eh.e_phnum) * sizeof(Elf64_Phdr), total))
    throw Fail(what + ": its program headers lie outside the file (truncated or corrupt)");
  if (eh.e_shnum && (eh.e_shentsize != sizeof(Elf64_Shdr) ||
                     !inside(eh.e_shoff, uint64_t(eh.e_shnum) * sizeof(Elf64_Shdr), total)))
    throw Fail(what + ": its section headers lie outside the file (truncated or corrupt)");
  for (int i = 0; i < eh.e_phnum; ++i) {
    Elf64_Phdr ph;
    std::memcpy(&ph, data.data() + eh.e_phoff + i * sizeof ph, sizeof ph);
    if (ph.p_type != PT_NULL && !inside(ph.p_offset, ph.p_filesz, total))
      throw Fail(what + ": segment " + std::to_string(i) + " ends at byte " +
                 std::to_string(ph.p_offset + ph.p_filesz) + " of a " + std::to_string(total) +
                 "-byte file (truncated or corrupt)");
  }
  for (int i = 0; i < eh.e_shnum; ++i) {
    Elf64_Shdr sh;
    std::memcpy(&sh, data.data() + eh.e_shoff + i * sizeof sh, sizeof sh);
    if (sh.sh_type != SHT_NOBITS && sh.sh_type != SHT_NULL && !inside(sh.sh_offset, sh.sh_size, total))
      throw Fail(what + ": section " + std::to_string(i) + " lies outside the file (truncated or corrupt)");
  }
}

}  // namespace deploy
