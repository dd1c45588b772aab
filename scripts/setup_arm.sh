#!/usr/bin/env bash
# Sets up what running aarch64 bundles on this x86 machine needs. Idempotent.
#
#   1. the aarch64 GNU cross compiler and qemu user-mode emulation (Debian packages
#      g++-aarch64-linux-gnu, qemu-user-static), with apt-get (sudo only when not root);
#   2. an aarch64 sysroot with Python, built from Debian arm64 packages (apt-get download +
#      dpkg -x, no foreign architecture added to the host's dpkg), in $ARM_CACHE/sysroot;
#   3. the aarch64 wheels of the runtime stack (apache-tvm, apache-tvm-ffi, numpy, ml_dtypes,
#      typing_extensions, safetensors) unpacked into $ARM_CACHE/site.
#
# On success $ARM_CACHE/env.sh names what was made (ARM_SYSROOT, ARM_PYTHON, ARM_SITE, QEMU);
# tests/test_arm.py and examples/cross_compile_arm.py read it and skip (with the reason)
# when it is missing. Offline, this script fails and says why.
set -euo pipefail
cd "$(dirname "$0")/.."
ARM_CACHE=${TVMFRONT_ARM_CACHE:-$PWD/.cache/arm-sysroot}
HOST_PY=${HOST_PY:-.venv/bin/python}
[ -x "$HOST_PY" ] || HOST_PY=python3
mkdir -p "$ARM_CACHE"
ARM_CACHE=$(cd "$ARM_CACHE" && pwd)
SYSROOT=$ARM_CACHE/sysroot
SITE=$ARM_CACHE/site
STAMP=$ARM_CACHE/env.sh
log() { echo "setup_arm: $*" >&2; }

# Versions the aarch64 side must match (the runtime compares TVM versions; numpy etc. follow
# the host venv so results are comparable).
host_version() { "$HOST_PY" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true; }
TVM_VER=0.27.0.post1
FFI_VER=0.1.14.post1
pin() { local v; v=$(host_version "$1"); [ -n "$v" ] && echo "$1==$v" || echo "$1"; }
WHEELS="apache-tvm==$TVM_VER apache-tvm-ffi==$FFI_VER $(pin numpy) $(pin ml_dtypes) $(pin typing_extensions) $(pin safetensors)"

if [ -f "$STAMP" ] && grep -qx "# wheels: $WHEELS" "$STAMP" \
        && command -v aarch64-linux-gnu-g++ >/dev/null && command -v qemu-aarch64-static >/dev/null; then
    log "already set up ($STAMP)"
    exit 0
fi
rm -f "$STAMP"

# ---- 1. cross compiler and qemu ------------------------------------------------------------
if ! command -v aarch64-linux-gnu-g++ >/dev/null || ! command -v qemu-aarch64-static >/dev/null; then
    command -v apt-get >/dev/null || { log "apt-get not found: install an aarch64 g++ and qemu-aarch64-static by hand"; exit 1; }
    SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    log "installing g++-aarch64-linux-gnu qemu-user-static with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        g++-aarch64-linux-gnu qemu-user-static >/dev/null
fi

# ---- 2. aarch64 sysroot from Debian arm64 packages -----------------------------------------
# A private apt state (lists, cache) for arm64 only: the host's dpkg is never touched.
APT_DIR=$ARM_CACHE/apt
mkdir -p "$APT_DIR/lists/partial" "$APT_DIR/cache/archives/partial" "$APT_DIR/debs" "$APT_DIR/parts"
touch "$APT_DIR/status"
APT_OPTS=(-q -oAPT::Architecture=arm64 -oAPT::Architectures=arm64
          -oDir::State::Lists="$APT_DIR/lists" -oDir::State::status="$APT_DIR/status"
          -oDir::Cache="$APT_DIR/cache" -oAPT::Sandbox::User=root -oDebug::NoLocking=1)
OS_ID=$( . /etc/os-release 2>/dev/null; echo "${ID:-debian}")
if [ "$OS_ID" = ubuntu ]; then
    # Ubuntu serves arm64 from ports.ubuntu.com, not from the host's mirrors.
    CODENAME=$( . /etc/os-release; echo "$VERSION_CODENAME")
    printf 'deb http://ports.ubuntu.com/ubuntu-ports %s main\ndeb http://ports.ubuntu.com/ubuntu-ports %s-updates main\n' \
        "$CODENAME" "$CODENAME" > "$APT_DIR/sources.list"
    APT_OPTS+=(-oDir::Etc::SourceList="$APT_DIR/sources.list" -oDir::Etc::SourceParts="$APT_DIR/parts")
fi
apt_update() {
    log "fetching the $OS_ID arm64 package lists"
    apt-get "${APT_OPTS[@]}" update >/dev/null
    touch "$APT_DIR/updated"
}
[ -f "$APT_DIR/updated" ] || apt_update
# The aarch64 Python is the python3 this distribution ships for arm64 (python3.11 on Debian 12);
# the wheels below are fetched for that version.
PYV=$(apt-cache "${APT_OPTS[@]}" depends python3-minimal 2>/dev/null \
      | sed -n 's/.*Depends: python\([0-9]*\.[0-9]*\)-minimal.*/\1/p' | head -1)
[ -n "$PYV" ] || PYV=$("$HOST_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
log "aarch64 Python: $PYV"
# Python, the C/C++ runtime and OpenMP, with their library dependencies (resolved by apt, so
# renamed packages such as libssl3t64 are found), without what a sysroot never runs.
ROOTS="python$PYV-minimal libpython$PYV-stdlib libstdc++6 libgomp1"
PKGS=$(apt-cache "${APT_OPTS[@]}" depends --recurse --no-recommends --no-suggests --no-conflicts \
           --no-breaks --no-replaces --no-enhances $ROOTS 2>/dev/null \
       | grep -E '^[a-z0-9]' | sort -u \
       | grep -vE '^(perl|libperl|dpkg|tar|install-info|mailcap|mime-support|media-types|debconf|readline-common|gcc-[0-9]+-base|libselinux|libpcre|libacl|libmd0|libzstd)')
[ -n "$PKGS" ] || { log "could not resolve the arm64 packages (apt-cache depends failed)"; exit 1; }
need=()
for p in $PKGS; do
    ls "$APT_DIR/debs/${p}_"*.deb >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    log "downloading ${#need[@]} arm64 packages"
    download() { (cd "$APT_DIR/debs" && apt-get "${APT_OPTS[@]}" download "${need[@]}" >/dev/null); }
    download || { apt_update && download; }  # stale lists name versions the mirror dropped
fi
if [ ! -x "$SYSROOT/usr/bin/python$PYV" ]; then
    log "unpacking the sysroot into $SYSROOT"
    rm -rf "$SYSROOT.tmp"
    mkdir -p "$SYSROOT.tmp"
    for deb in "$APT_DIR/debs/"*.deb; do dpkg -x "$deb" "$SYSROOT.tmp"; done
    rm -rf "$SYSROOT"
    mv "$SYSROOT.tmp" "$SYSROOT"
fi

# ---- 3. aarch64 wheels ---------------------------------------------------------------------
log "downloading aarch64 wheels for Python $PYV: $WHEELS"
WHL=$ARM_CACHE/wheels
rm -rf "$WHL"  # exactly the pinned set, nothing left from an earlier pin
mkdir -p "$WHL"
# shellcheck disable=SC2086
"$HOST_PY" -m pip download -q --only-binary=:all: --dest "$WHL" \
    --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
    --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 $WHEELS
rm -rf "$SITE.tmp"
mkdir -p "$SITE.tmp"
for w in "$WHL"/*.whl; do "$HOST_PY" -m zipfile -e "$w" "$SITE.tmp"; done
rm -rf "$SITE"
mv "$SITE.tmp" "$SITE"

# ---- smoke test: the emulated Python imports the TVM runtime ------------------------------
QEMU=$(command -v qemu-aarch64-static)
log "checking: aarch64 python$PYV imports tvm under qemu (takes ~20 s)"
PYTHONPATH=$SITE PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1 \
    "$QEMU" -L "$SYSROOT" "$SYSROOT/usr/bin/python$PYV" -c \
    'import platform, numpy, safetensors, tvm; print("aarch64 ok:", platform.machine(), tvm.__version__)' >&2

cat > "$STAMP" <<EOF
# written by scripts/setup_arm.sh
# wheels: $WHEELS
ARM_SYSROOT=$SYSROOT
ARM_PYTHON=$SYSROOT/usr/bin/python$PYV
ARM_SITE=$SITE
QEMU=$QEMU
ARM_CXX=$(command -v aarch64-linux-gnu-g++)
EOF
log "ready: $STAMP"
