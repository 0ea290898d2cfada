#!/usr/bin/env bash
# On a lent NVIDIA machine (H100/H200), as root, from the repository root, after tests/gpu/pack_device_bundle.sh
# ran here and .device travelled (carry: [".device"]). At most 8 minutes; prints PASS/FAIL rows:
#   (a) engine: CUDA tensors through a checkpoint (its stages) and two restores at once;
#   (b) kernel: the GPU example built (the build's stages; checkpoint target <= 8 s) and restored;
#   (c) timings with and without a spare; (d) two sessions at once, checksums equal to a cold run's;
#   then (b-user)/(d-user) as a useradd user in user-namespace mode, and (b-cap)/(d-cap) as another in
#   capability mode (group snapkdevice may run a criu copy holding only cap_checkpoint_restore).
# Arguments choose the root parts (default: engine kernel timings sessions); GPU_RUNS sets the timing runs.
# Rehearsal on a CPU machine (no bundle, this checkout's .venv and CRIU; the GPU-only engine part left out; the
# users need a Python they can run, with torch, such as that of `make system-install`):
#   REHEARSE=1 DEVICE_NOTEBOOK=examples/torch_setup.ipynb SNAPKERNEL_RESTORE_NETWORK=own \
#     USER_PYTHON=/opt/snapkernel/bin/python bash tests/gpu/device_check.sh kernel sessions
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
SITE=/tmp/snapkernel-site
CAP_DIR=/opt/snapkernel-device
GROUP=snapkdevice  # its own: the cleanup removes it, and a machine-wide install may have made "snapkernel"
USERS=(snapkgpu snapkcap)
STARTED=$SECONDS
section() { echo "== [$((SECONDS - STARTED)) s] $*"; }

if [ -n "${REHEARSE:-}" ]; then
  PYTHON=$REPO/.venv/bin/python
  CRIU=$REPO/.venv/bin/criu
  CRIU_REAL=$CRIU
  mkdir -p "$SITE"
else
  PYTHON=${PYTHON:-python3}
  CRIU=$REPO/.device/criu/criu
  CRIU_REAL=$REPO/.device/criu/criu.real
  rm -rf "$SITE"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .device/wheels/*.whl
  cp -r .device/py/pycriu "$SITE/"
  # The provisioner is found through its entry point: give the source tree a dist-info of its own.
  mkdir -p "$SITE/jupyter_snapkernel_device-0.dist-info"
  printf 'Metadata-Version: 2.1\nName: jupyter-snapkernel-device\nVersion: 0\n' \
    >"$SITE/jupyter_snapkernel_device-0.dist-info/METADATA"
  printf '[jupyter_client.kernel_provisioners]\nsnapkernel-provisioner = jupyter_snapkernel.launch.provisioner:SnapKernelProvisioner\n' \
    >"$SITE/jupyter_snapkernel_device-0.dist-info/entry_points.txt"
fi
USER_PYTHON=${USER_PYTHON:-$PYTHON}
export PYTHONPATH="$REPO/engine:$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"
export JUPYTER_PATH="$REPO/share/jupyter"
export SNAPKERNEL_CRIU="$CRIU"
export SNAPKERNEL_STORE=/tmp/snapkernel-store
export PYTHONUNBUFFERED=1
export GPU_RUNS=${GPU_RUNS:-2}
rm -rf "$SNAPKERNEL_STORE"
section "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "no nvidia-smi"
"$SNAPKERNEL_CRIU" --version | head -n1
"$SNAPKERNEL_CRIU" check || true
"$PYTHON" -m jupyter_snapkernel.cli.commands doctor || true
section "as root: ${*:-engine kernel timings sessions}"
timeout 270 "$PYTHON" tests/gpu/device_check.py "$@" || echo "(root) FAIL: exit $? (124: ran past its 270 s)"

USER_TREE=/tmp/snapkernel-user-tree
cleanup() {
  for name in "${USERS[@]}"; do userdel -r "$name" >/dev/null 2>&1 || true; done
  groupdel "$GROUP" >/dev/null 2>&1 || true
  rm -rf "$USER_TREE" "$CAP_DIR" /etc/ld.so.conf.d/snapkernel-device.conf
  ldconfig || true
}
trap cleanup EXIT
cleanup
rm -rf "$USER_TREE" && cp -r "$REPO" "$USER_TREE" && chmod -R a+rX "$USER_TREE" "$SITE"
[ -z "${REHEARSE:-}" ] || chmod a+rx "$(dirname "$REPO")" "$REPO"

# as_user NAME LABEL EXPECTED_MODE [VAR=VALUE...]: (b) and (d) as an ordinary user, in a clean environment.
as_user() {
  local name=$1 label=$2 mode=$3
  shift 3
  section "as $name, $mode mode"
  timeout 100 runuser -u "$name" -- env -i PATH="$SITE/bin:/usr/local/bin:/usr/bin:/bin" HOME="/home/$name" \
    USER="$name" PYTHONPATH="$USER_TREE/engine:$USER_TREE:$SITE" JUPYTER_PATH="$USER_TREE/share/jupyter" SNAPKERNEL_CRIU="$SNAPKERNEL_CRIU" \
    SNAPKERNEL_STORE="/home/$name/store" PYTHONUNBUFFERED=1 SESSIONS_LABEL="$label" EXPECT_MODE="$mode" \
    ${DEVICE_NOTEBOOK:+DEVICE_NOTEBOOK="$DEVICE_NOTEBOOK"} \
    ${SNAPKERNEL_RESTORE_NETWORK:+SNAPKERNEL_RESTORE_NETWORK="$SNAPKERNEL_RESTORE_NETWORK"} "$@" \
    "$USER_PYTHON" "$USER_TREE/tests/gpu/device_check.py" kernel sessions || echo "($label) FAIL: exit $? (124: ran past 100 s)"
}

# User-namespace mode: no grant at all.
useradd --create-home --shell /bin/bash snapkgpu
as_user snapkgpu -user user-namespace

# Capability mode: a criu copy holding only cap_checkpoint_restore, runnable by group $GROUP alone. A file
# capability makes the loader ignore LD_LIBRARY_PATH, so the bundle's libraries the machine lacks go through
# ld.so.conf.
if [ -z "${REHEARSE:-}" ]; then
  mkdir -p "$CAP_DIR/lib"
  for lib in .device/criu/lib/*; do
    ldconfig -p | grep -q " $(basename "$lib") " || cp -L "$lib" "$CAP_DIR/lib/"
  done
  echo "$CAP_DIR/lib" >/etc/ld.so.conf.d/snapkernel-device.conf
  ldconfig
fi
groupadd --system "$GROUP"
install -d -m 0755 "$CAP_DIR"
install -o root -g "$GROUP" -m 0750 "$CRIU_REAL" "$CAP_DIR/criu-cap"
if command -v setcap >/dev/null; then
  setcap cap_checkpoint_restore+eip "$CAP_DIR/criu-cap"
else # struct vfs_cap_data, revision 2, effective: cap_checkpoint_restore (40) permitted and inheritable
  "$PYTHON" -c 'import os, struct, sys; os.setxattr(sys.argv[1], "security.capability", struct.pack("<5I", 0x02000001, 0, 0, 1 << 8, 1 << 8))' "$CAP_DIR/criu-cap"
fi
ldd "$CAP_DIR/criu-cap" | grep "not found" && echo "(cap) FAIL: libraries missing for the capability criu"
useradd --create-home --shell /bin/bash --groups "$GROUP" snapkcap
as_user snapkcap -cap capability SNAPKERNEL_CRIU_CAP="$CAP_DIR/criu-cap"
section "done"
