"""A structural check of a shared library's bytes before the dynamic loader maps them.

dlopen accepts an ELF file whose segments run past its end (a truncated module.so) and the
process then dies of SIGBUS on first touch; a bundle's hash does not help when the manifest was
rewritten with the truncated file's hash. Checking that every header, segment and section lies
inside the file turns that into an error (the same check as examples/deploy_cpp/elf_check.cc).
"""

import platform
import struct

from ..errors import BundleError

_MACHINES = {"x86_64": 62, "amd64": 62, "aarch64": 183, "arm64": 183}
_ET_DYN, _PT_NULL, _SHT_NULL, _SHT_NOBITS = 3, 0, 0, 8
_EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
_PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr: type, flags, offset, vaddr, paddr, filesz, ..
_SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr: name, type, flags, addr, offset, size, ..


def _inside(offset, size, total):
    return 0 <= offset <= total and 0 <= size <= total - offset


def check_shared_object(data, what):
    """BundleError naming `what` unless `data` is a 64-bit little-endian ELF shared library
    for this machine whose program headers, segments and sections all lie inside it."""
    total = len(data)
    if total < _EHDR.size:
        raise BundleError(f"{what} is too short for a shared library (truncated)")
    (ident, e_type, machine, _, _, phoff, shoff, _, _, phentsize, phnum, shentsize, shnum,
     _) = _EHDR.unpack_from(data)
    if ident[:4] != b"\x7fELF":
        raise BundleError(f"{what} is not an ELF file")
    if ident[4] != 2 or ident[5] != 1:
        raise BundleError(f"{what} is not a 64-bit little-endian ELF file")
    if e_type != _ET_DYN:
        raise BundleError(f"{what} is not a shared library")
    host = _MACHINES.get(platform.machine().lower())
    if host is not None and machine != host:
        raise BundleError(f"{what} is a library for another CPU (ELF machine {machine}, this "
                          f"machine is {platform.machine()})")
    if phentsize != _PHDR.size or not _inside(phoff, phnum * _PHDR.size, total):
        raise BundleError(f"{what}: its program headers lie outside the file (truncated or "
                          "corrupt)")
    if shnum and (shentsize != _SHDR.size or not _inside(shoff, shnum * _SHDR.size, total)):
        raise BundleError(f"{what}: its section headers lie outside the file (truncated or "
                          "corrupt)")
    for i in range(phnum):
        p_type, _, offset, _, _, filesz, _, _ = _PHDR.unpack_from(data, phoff + i * _PHDR.size)
        if p_type != _PT_NULL and not _inside(offset, filesz, total):
            raise BundleError(f"{what}: segment {i} ends at byte {offset + filesz} of a "
                              f"{total}-byte file (truncated or corrupt)")
    for i in range(shnum):
        fields = _SHDR.unpack_from(data, shoff + i * _SHDR.size)
        sh_type, offset, size = fields[1], fields[4], fields[5]
        if sh_type not in (_SHT_NULL, _SHT_NOBITS) and not _inside(offset, size, total):
            raise BundleError(f"{what}: section {i} lies outside the file (truncated or "
                              "corrupt)")
