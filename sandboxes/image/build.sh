#!/usr/bin/env bash
# Build the sandbox base image offline: debootstrap a minimal Debian with python3, import it into Docker.
#
# No registry pull is needed. The rootfs tarball is cached on disk so a rebuild after a daemon restart
# (or a wiped image store) takes seconds instead of a fresh debootstrap.
#
# Usage: sandboxes/image/build.sh [--force]
# Env:   TOOLGYM_SANDBOX_IMAGE  (default toolgym-sandbox:bookworm)
#        TOOLGYM_CACHE_DIR      (default ~/.cache/toolgym)
#        TOOLGYM_DEBIAN_MIRROR  (default: first Debian URI that apt on this machine uses)
set -euo pipefail

IMAGE="${TOOLGYM_SANDBOX_IMAGE:-toolgym-sandbox:bookworm}"
CACHE_DIR="${TOOLGYM_CACHE_DIR:-${HOME:-/root}/.cache/toolgym}"
SUITE="${TOOLGYM_DEBIAN_SUITE:-bookworm}"
TARBALL="$CACHE_DIR/rootfs-$SUITE-python3.tar"
FORCE=0
[[ "${1:-}" == "--force" ]] && FORCE=1

die() { echo "sandbox image build: $*" >&2; exit 1; }

if [[ $FORCE -eq 0 ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
  echo "sandbox image $IMAGE present; skipping build"
  exit 0
fi

# Pick the mirror apt already reaches, so the build uses the same (only) route to Debian's packages.
find_mirror() {
  if [[ -n "${TOOLGYM_DEBIAN_MIRROR:-}" ]]; then echo "$TOOLGYM_DEBIAN_MIRROR"; return; fi
  local uri
  uri=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' \
        | grep -v -- '-security' | head -n1 || true)
  if [[ -z "$uri" ]]; then
    uri=$(grep -hE '^\s*deb\s' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' \
          | grep -v -- '-security' | head -n1 || true)
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

if [[ $FORCE -eq 1 || ! -s "$TARBALL" ]]; then
  command -v debootstrap >/dev/null || die "debootstrap not installed (apt-get install -y debootstrap)"
  [[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
  mkdir -p "$CACHE_DIR"
  ROOTFS=$(mktemp -d "$CACHE_DIR/rootfs.XXXXXX")
  trap 'rm -rf "$ROOTFS"' EXIT
  MIRROR=$(find_mirror)
  echo "debootstrap $SUITE from $MIRROR into $ROOTFS"
  debootstrap --variant=minbase --include=python3 "$SUITE" "$ROOTFS" "$MIRROR" \
    >"$CACHE_DIR/debootstrap.log" 2>&1 || { tail -20 "$CACHE_DIR/debootstrap.log" >&2; die "debootstrap failed"; }
  # Trim what a sandbox never needs; keeps the image small and the import fast.
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
         "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
  mkdir -p "$ROOTFS/work"
  tar -C "$ROOTFS" -cf "$TARBALL.tmp" . && mv "$TARBALL.tmp" "$TARBALL"
  rm -rf "$ROOTFS"; trap - EXIT
fi

echo "importing $TARBALL as $IMAGE"
docker import --change 'WORKDIR /work' --change 'CMD ["/bin/sh"]' \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  "$TARBALL" "$IMAGE" >/dev/null || die "docker import failed"
docker image inspect "$IMAGE" >/dev/null || die "image $IMAGE missing after import"
echo "sandbox image $IMAGE ready"
