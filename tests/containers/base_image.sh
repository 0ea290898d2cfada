#!/usr/bin/env bash
# Build the offline base image used by the container tests: snapkernel-base:bookworm.
#
# The image holds only Debian's system side: python3 (3.11, the interpreter that a
# machine-wide snapkernel venv is made from), util-linux (unshare, setpriv, nsenter),
# libcap2-bin, procps, iproute2 and the shared libraries a CRIU 4.x binary built on a
# Debian 12 host links against. At test time the host's install (a venv made from
# /usr/bin/python3.11 under a PREFIX such as /opt/snapkernel, CRIU binaries inside) is
# bind-mounted read-only at the same path.
#
# No registry is needed: debootstrap pulls from the Debian mirror apt already uses, then
# the root filesystem is imported with `podman import`. Idempotent: does nothing when the
# image exists (FORCE=1 rebuilds). Must run as root.
#
# Environment:
#   IMAGE   image name            (default snapkernel-base:bookworm)
#   MIRROR  Debian mirror URL     (default: read from /etc/apt/sources.list{,.d})
#   CRIU    a criu binary whose libraries must be present (default <repo>/.venv/bin/criu,
#           skipped when absent; a fixed list covers CRIU 4.2.1 built on Debian 12)
#   FORCE=1 rebuild even when the image exists
set -euo pipefail

IMAGE=${IMAGE:-snapkernel-base:bookworm}
SUITE=bookworm
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CRIU=${CRIU:-$REPO/.venv/bin/criu}
T0=$(date +%s.%N)

step() { printf '[base_image %6.1fs] %s\n' "$(awk -v a="$T0" -v b="$(date +%s.%N)" 'BEGIN{print b-a}')" "$*"; }
die() { step "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root (debootstrap, podman storage)"
for tool in podman debootstrap; do
    command -v "$tool" >/dev/null || die "$tool missing: apt-get install podman runc debootstrap"
done

if [ "${FORCE:-0}" != 1 ] && podman image exists "$IMAGE"; then
    step "image $IMAGE exists, nothing to do (FORCE=1 rebuilds)"
    exit 0
fi

# --- the mirror apt already uses (deb822 .sources first, then one-line .list files) ---
find_mirror() {
    local f
    for f in /etc/apt/sources.list.d/*.sources; do
        [ -f "$f" ] || continue
        # paragraphs: Types: deb ... URIs: ... Suites: (contains bookworm exactly)
        awk -v suite="$SUITE" '
            BEGIN { RS=""; FS="\n" }
            {
                types=""; uris=""; suites=""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^Types:/)  { types=$i;  sub(/^Types:[ \t]*/, "", types) }
                    if ($i ~ /^URIs:/)   { uris=$i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites=$i; sub(/^Suites:[ \t]*/, "", suites) }
                }
                if ((" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "$f"
    done
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
        [ -f "$f" ] || continue
        # deb [opts] URI SUITE COMPONENTS...
        sed -E 's/\[[^]]*\]//' "$f" | awk -v suite="$SUITE" '$1 == "deb" && $3 == suite { print $2; exit }'
    done
}
MIRROR=${MIRROR:-$(find_mirror | head -n1)}
[ -n "$MIRROR" ] || die "no 'deb ... $SUITE' source found in /etc/apt; set MIRROR="
step "mirror: $MIRROR"

# --- package list ---
PKGS=(
    python3                 # Debian's 3.11: /usr/bin/python3.11, base of the mounted venv
    util-linux              # unshare, setpriv, nsenter (Essential, listed for clarity)
    libcap2-bin             # getpcaps, capsh, setcap
    procps                  # ps, pgrep
    iproute2                # ip, ss
    passwd                  # useradd for the image's uid 1000
    # runtime libraries of CRIU 4.2.1 built on Debian 12 (ldd + dpkg -S), first level;
    # their own dependencies (gnutls -> nettle, p11-kit ...) come in through apt
    libbsd0 libgnutls30 libnftables1 libprotobuf-c1 libnl-3-200 libnet1 libuuid1
    libmd0 libmnl0 libnftnl11 libxtables12 libjansson4
)
if [ -x "$CRIU" ] && command -v ldd >/dev/null && command -v dpkg >/dev/null; then
    # add whatever the actual binary links against, in case it was built differently
    while read -r lib; do
        pkg=$(dpkg -S "$(readlink -f "$lib")" 2>/dev/null || dpkg -S "$lib" 2>/dev/null || true)
        pkg=${pkg%%:*}
        [ -n "$pkg" ] && PKGS+=("$pkg")
    done < <(ldd "$CRIU" | awk '/=> \//{ print $3 }')
    step "libraries of $CRIU mapped to packages"
fi
INCLUDE=$(printf '%s\n' "${PKGS[@]}" | sort -u | paste -sd, -)
step "packages: $INCLUDE"

# --- debootstrap into a scratch root filesystem ---
WORK=$(mktemp -d /var/tmp/snapkernel-rootfs.XXXXXX)
cleanup() { rm -rf --one-file-system "$WORK"; }
trap cleanup EXIT
ROOTFS=$WORK/rootfs
step "debootstrap --variant=minbase $SUITE -> $ROOTFS"
if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$WORK/debootstrap.log" 2>&1; then
    tail -n 30 "$WORK/debootstrap.log" >&2
    die "debootstrap failed"
fi

step "configure: sources.list, uid 1000, trim caches"
printf 'deb %s %s main\n' "$MIRROR" "$SUITE" >"$ROOTFS/etc/apt/sources.list"
chroot "$ROOTFS" /usr/sbin/groupadd -g 1000 user
chroot "$ROOTFS" /usr/sbin/useradd -u 1000 -g 1000 -m -s /bin/bash user
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/* \
       "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/* 2>/dev/null || true
# sanity: every library of the criu binary resolves inside the root filesystem
if [ -x "$CRIU" ]; then
    mkdir -p "$ROOTFS/tmp/check"
    cp "$CRIU" "$ROOTFS/tmp/check/criu"
    if chroot "$ROOTFS" /usr/bin/ldd /tmp/check/criu | grep -q 'not found'; then
        chroot "$ROOTFS" /usr/bin/ldd /tmp/check/criu | grep 'not found' >&2
        die "criu libraries missing in the image"
    fi
    rm -rf "$ROOTFS/tmp/check"
    step "criu libraries all resolve in the root filesystem"
fi
PYVER=$(chroot "$ROOTFS" /usr/bin/python3.11 -c 'import sys; print(sys.version.split()[0])')
step "python in image: $PYVER (host /usr/bin/python3.11: $(/usr/bin/python3.11 -c 'import sys; print(sys.version.split()[0])' 2>/dev/null || echo absent))"

step "podman import -> $IMAGE"
tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOTFS" -c . \
    | podman import --quiet \
        --change 'CMD=["/bin/bash"]' \
        --change 'ENV=PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV=LANG=C.UTF-8' \
        --message "snapkernel base: debootstrap minbase $SUITE from $MIRROR" \
        - "$IMAGE" >/dev/null
step "done: $(podman image inspect --format '{{.Id}} {{.Size}}' "$IMAGE" | awk '{printf "%.12s, %d MB", $1, $2/1e6}')"
