#!/usr/bin/env bash
# Builds docker/Dockerfile with podman on a machine without a Docker engine
# or a registry (Debian 12, root): the `debian:12` base is made from Debian
# packages by debootstrap and cached outside the clone, so the Dockerfile
# stays the one users build with `docker build -f docker/Dockerfile .`.
# Tested recipe: ../shared/notes/containers.md (crun's ulimit failure: runc;
# host networking for apt inside the build).
#
#   docker/build.sh [TAG]        # default makima:dev; prints size and timing
#
# Environment: MAKIMA_IMAGE_CACHE (default /var/cache/makima-image) holds
# the base rootfs tarball and containers.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-makima:dev}
cache=${MAKIMA_IMAGE_CACHE:-/var/cache/makima-image}
say() { echo "image: $*" >&2; }
start=$SECONDS
missing=()
for p in podman runc debootstrap uidmap; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing ${missing[*]}"
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
mkdir -p "$cache"
printf '[containers]\ndefault_ulimits = []\n' > "$cache/containers.conf"
export CONTAINERS_CONF="$cache/containers.conf"
pod() { podman --runtime runc "$@"; }
if ! pod image exists docker.io/library/debian:12; then
  if [ ! -s "$cache/debian12-rootfs.tar" ]; then
    mirror=$(grep -h '^URIs:' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1 | awk '{print $2}')
    mirror=${mirror:-http://deb.debian.org/debian}
    say "making the debian:12 base with debootstrap from $mirror (about a minute)"
    rm -rf "$cache/rootfs"
    debootstrap --variant=minbase bookworm "$cache/rootfs" "$mirror" >/dev/null
    # What debootstrap downloaded is not part of the base (as in the
    # official image): the .debs and the package lists.
    rm -rf "$cache/rootfs/var/cache/apt/archives/"*.deb \
      "$cache/rootfs/var/lib/apt/lists/"*
    tar -C "$cache/rootfs" -c . > "$cache/debian12-rootfs.tar.tmp"
    mv "$cache/debian12-rootfs.tar.tmp" "$cache/debian12-rootfs.tar"
    rm -rf "$cache/rootfs"
  fi
  pod import "$cache/debian12-rootfs.tar" docker.io/library/debian:12 >/dev/null
fi
say "building $tag from docker/Dockerfile"
pod build --pull=never --network=host -t "$tag" -f docker/Dockerfile . >&2
size=$(pod image inspect "$tag" --format '{{.Size}}')
say "built $tag: $((size / 1000000)) MB in $((SECONDS - start)) s"
