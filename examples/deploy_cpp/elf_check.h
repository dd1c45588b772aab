// A structural check of module.so before dlopen: an ELF shared object for this CPU whose
// segments lie inside the file. A library cut short (a copy interrupted, a full disk) passes
// dlopen's own checks and dies of SIGBUS when a page past the end of the file is touched;
// this turns it into a message. (Arbitrary corruption inside the file is what the manifest's
// SHA-256 is for.)
#ifndef TVMFRONT_DEPLOY_ELF_CHECK_H_
#define TVMFRONT_DEPLOY_ELF_CHECK_H_

#include <string>

namespace deploy {
// Fail naming `what` unless `data` is a well-formed ELF64 shared object for this machine.
void check_shared_object(const std::string& data, const std::string& what);
}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_ELF_CHECK_H_
