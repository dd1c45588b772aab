"""Ed25519 signatures of bundles: who made this bundle, and was it changed since.

A bundle holds native code that loading runs. The manifest's SHA-256 hashes detect a corrupt
file, not a deliberate change (whoever changes a file can rewrite its hash too). A signature
over the manifest, which holds every file's hash, covers the whole bundle: with trusted keys
given, tvf.load refuses a bundle whose signature is missing, bad or by another key.

    >>> from tvmfront.runtime import signing
    >>> key = signing.generate_key()
    >>> signing.save_key(key, "release.pem")         # private: keep it secret
    >>> public = signing.public_key_bytes(key)        # 32 bytes, share freely
    >>> module.export("bundle", sign_key="release.pem")
    >>> tvf.load("bundle", trusted_keys=[public])

Keys come from `cryptography` (its Ed25519, a maintained implementation of a standard scheme).
Anywhere a key is asked for, it may be the key object, its raw 32 bytes (the private seed or
the public key), PEM bytes, or the path of a PEM file (or of a file holding the raw 32 bytes).
"""

import json
import os

from ..errors import BundleError
from .manifest import SIGNATURE

ALGORITHM = "ed25519"


def _ed25519():
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # the runtime loads unsigned bundles without it
        raise BundleError("signing and checking bundle signatures needs the 'cryptography' "
                          "package (pip install cryptography)") from None
    return ed25519, serialization


def generate_key():
    """A new Ed25519 private key (a cryptography Ed25519PrivateKey)."""
    ed25519, _ = _ed25519()
    return ed25519.Ed25519PrivateKey.generate()


def _key_bytes(spec, what):
    """Raw key material of a path, bytes or bytearray, or None for a key object."""
    if isinstance(spec, (str, os.PathLike)):
        try:
            with open(spec, "rb") as f:
                return f.read()
        except OSError as err:
            raise BundleError(f"cannot read the {what} key file {os.fspath(spec)!r}: "
                              f"{err.strerror}") from None
    if isinstance(spec, (bytes, bytearray, memoryview)):
        return bytes(spec)
    return None


def _key(spec, private):
    """An Ed25519 private (or public) key from anything the module docstring lists."""
    ed25519, serialization = _ed25519()
    cls = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    what, kind = ("sign_key", "private") if private else ("a trusted key", "public")
    if not private and isinstance(spec, ed25519.Ed25519PrivateKey):
        return spec.public_key()
    if isinstance(spec, cls):
        return spec
    data = _key_bytes(spec, kind)
    if data is None:
        raise BundleError(f"{what} must be an Ed25519 {kind} key, its raw 32 bytes, PEM bytes "
                          f"or a PEM file path; got {type(spec).__name__}")
    try:
        if len(data) == 32:
            key = cls.from_private_bytes(data) if private else cls.from_public_bytes(data)
        elif private or b"PRIVATE KEY" in data:  # a private key also names its public key
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as err:
        raise BundleError(f"{what} is not a usable Ed25519 {kind} key ({err})") from None
    if not private and isinstance(key, ed25519.Ed25519PrivateKey):
        key = key.public_key()
    if not isinstance(key, cls):
        raise BundleError(f"{what} is a {type(key).__name__}, not an Ed25519 {kind} key")
    return key


def private_key(spec):
    """An Ed25519PrivateKey from a key object, a 32-byte seed, PEM bytes or a file path."""
    return _key(spec, private=True)


def public_key(spec):
    """An Ed25519PublicKey from a public or private key object, 32 raw public bytes, PEM
    bytes (public or private) or a file path."""
    return _key(spec, private=False)


def public_key_bytes(spec):
    """The raw 32 bytes of the public key of `spec` (anything public_key accepts)."""
    _, serialization = _ed25519()
    return public_key(spec).public_bytes(serialization.Encoding.Raw,
                                         serialization.PublicFormat.Raw)


def save_key(key, path):
    """Write private key `key` to `path` as unencrypted PKCS#8 PEM (mode 0600) and its public
    key to `path + '.pub'`; returns the two paths."""
    _, serialization = _ed25519()
    key = private_key(key)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path = os.fspath(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    with open(path + ".pub", "wb") as f:
        f.write(key.public_key().public_bytes(serialization.Encoding.PEM,
                                              serialization.PublicFormat.SubjectPublicKeyInfo))
    return path, path + ".pub"


def sign(manifest_bytes, key):
    """The signature file's bytes for the manifest `manifest_bytes`, signed with `key`."""
    key = private_key(key)
    return json.dumps({"algorithm": ALGORITHM, "public_key": public_key_bytes(key).hex(),
                       "signature": key.sign(manifest_bytes).hex()}, indent=2).encode()


def trusted(keys):
    """{raw public key bytes: Ed25519PublicKey} of the trusted keys given to tvf.load."""
    if isinstance(keys, (str, bytes, os.PathLike)) or not hasattr(keys, "__iter__"):
        keys = [keys]  # one key given bare
    found = {public_key_bytes(k): public_key(k) for k in keys}
    if not found:
        raise BundleError("trusted_keys is empty, so no bundle could be trusted; pass the "
                          "signers' public keys, or None to load without checking signatures")
    return found


def verify(manifest_bytes, signature_bytes, keys, where):
    """Raise BundleError unless `signature_bytes` is a valid signature of `manifest_bytes` by
    one of `keys` (from trusted())."""
    if signature_bytes is None:
        raise BundleError(f"{where}: the bundle is not signed, and trusted_keys were given")
    try:
        sig = json.loads(signature_bytes)
        if not (isinstance(sig, dict) and set(sig) == {"algorithm", "public_key", "signature"}
                and sig["algorithm"] == ALGORITHM):
            raise ValueError("not an ed25519 signature record")
        signer, signature = bytes.fromhex(sig["public_key"]), bytes.fromhex(sig["signature"])
    except (ValueError, TypeError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise BundleError(f"{where}: the signature file {SIGNATURE} is malformed") from None
    if signer not in keys:
        raise BundleError(f"{where}: signed by key {signer.hex()[:16]}…, which is not among "
                          f"trusted_keys")
    from cryptography.exceptions import InvalidSignature

    try:
        keys[signer].verify(signature, manifest_bytes)
    except InvalidSignature:
        raise BundleError(f"{where}: bad signature: the manifest was changed after signing, or "
                          f"the signature was forged") from None
