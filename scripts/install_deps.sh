#!/usr/bin/env bash
# Installs the Debian packages the build needs when they are missing (as root, or through
# sudo when available). Prints the one command to run otherwise. Extra packages can be named
# as arguments (for example the corpus packages of `make data`).
set -u
need=()
check() {  # package, file that proves it is installed
  [ -e "$2" ] || need+=("$1")
}
check gcc /usr/bin/gcc
check make /usr/bin/make
check bc /usr/bin/bc
check libdnnl-dev /usr/include/dnnl.h
check libopenblas-openmp-dev /usr/include/x86_64-linux-gnu/openblas-openmp/cblas.h
check libpcre2-dev /usr/include/pcre2.h
check libcjson-dev /usr/include/cjson/cJSON.h
check libstb-dev /usr/include/stb/stb_image_write.h
check fonts-dejavu-core /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf
check zlib1g-dev /usr/include/zlib.h
for p in "$@"; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "installing missing packages: ${need[*]}"
if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo"
else
  echo "error: missing packages ${need[*]}; run: sudo apt-get update && sudo apt-get install -y ${need[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null || { echo "error: apt-get update failed" >&2; exit 1; }
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null || { echo "error: apt-get install ${need[*]} failed" >&2; exit 1; }
