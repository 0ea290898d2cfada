#!/usr/bin/env bash
# Runs probe_inside.sh in snapkernel-base:bookworm as uid 1000 under the full set of
# relaxations, then with one relaxation removed at a time, and prints each result.
# Needs root, podman, runc, the image (base_image.sh) and a criu binary (CRIU, default
# <repo>/.venv/bin/criu), copied to a scratch dir as criu-plain and criu-cap (+eip).
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
IMAGE=${IMAGE:-snapkernel-base:bookworm}
CRIU=${CRIU:-$REPO/.venv/bin/criu}
CT=$(mktemp -d /tmp/ctest.XXXXXX)
trap 'rm -rf "$CT"' EXIT
chmod 755 "$CT"
cp "$CRIU" "$CT/criu-plain"; cp "$CRIU" "$CT/criu-cap"
setcap cap_checkpoint_restore+eip "$CT/criu-cap"

# VM workarounds (field notes): rlimits podman cannot raise, crun vs hybrid cgroups, no bridge
BASE=(podman run --rm --runtime runc --network none
      --ulimit nofile=20000:20000 --ulimit nproc=32768:32768
      --user 1000:1000 -v "$CT:/ctest:ro" -v "$HERE:/probe:ro")
CAP=(--cap-drop ALL --cap-add CHECKPOINT_RESTORE)
SECCOMP=(--security-opt seccomp=unconfined)
UNMASK=(--security-opt unmask=/proc/*)

run() {
    local name=$1; shift
    echo "=== $name: $*"
    "${BASE[@]}" "$@" "$IMAGE" /probe/probe_inside.sh 2>&1 | grep -v ' Killed  '
}
run full                 "${CAP[@]}" "${SECCOMP[@]}" "${UNMASK[@]}"
run no-cap-add           --cap-drop ALL "${SECCOMP[@]}" "${UNMASK[@]}"
run default-seccomp      "${CAP[@]}" "${UNMASK[@]}"
run masked-proc          "${CAP[@]}" "${SECCOMP[@]}"
run no-new-privileges    "${CAP[@]}" "${SECCOMP[@]}" "${UNMASK[@]}" --security-opt no-new-privileges
run podman-defaults
