// SHA-256 (FIPS 180-4) of a byte string, as lowercase hex: the manifest's hash of each file.
#ifndef TVMFRONT_DEPLOY_SHA256_H_
#define TVMFRONT_DEPLOY_SHA256_H_

#include <string>

namespace deploy {
std::string sha256_hex(const std::string& data);
}  // namespace deploy

#endif  // TVMFRONT_DEPLOY_SHA256_H_
