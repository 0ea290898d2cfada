#!/usr/bin/env bash
# On a lent NVIDIA machine (H100/H200), from the repository root, after tests/gpu/pack_device_bundle.sh
# ran here and .device travelled (carry: [".device"]). Prints (a) engine, (b) kernel, (c) timings with and
# without a spare, (d) two sessions at once, then (d-user) the same as a useradd user in user-namespace mode.
# Rehearsed on a CPU machine with DEVICE_NOTEBOOK=examples/torch_setup.ipynb SNAPKERNEL_RESTORE_NETWORK=own.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$(pwd)
SITE=/tmp/snapkernel-site
PYTHON=${PYTHON:-python3}
rm -rf "$SITE"
"$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .device/wheels/*.whl
cp -r .device/py/pycriu "$SITE/"
# The provisioner is found through its entry point: give the source tree a dist-info of its own.
mkdir -p "$SITE/jupyter_snapkernel_device-0.dist-info"
printf 'Metadata-Version: 2.1\nName: jupyter-snapkernel-device\nVersion: 0\n' >"$SITE/jupyter_snapkernel_device-0.dist-info/METADATA"
printf '[jupyter_client.kernel_provisioners]\nsnapkernel-provisioner = jupyter_snapkernel.launch.provisioner:SnapKernelProvisioner\n' \
  >"$SITE/jupyter_snapkernel_device-0.dist-info/entry_points.txt"
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$SITE/bin:$PATH"
export JUPYTER_PATH="$REPO/share/jupyter"
export SNAPKERNEL_CRIU="$REPO/.device/criu/criu"
export SNAPKERNEL_STORE=/tmp/snapkernel-store
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$SNAPKERNEL_CRIU" --version | head -n1
"$SNAPKERNEL_CRIU" check || true
"$PYTHON" -m jupyter_snapkernel.cli.commands doctor || true
"$PYTHON" tests/gpu/device_check.py "$@"

# (d-user): an ordinary user builds and restores in user-namespace mode, from a copy of the tree it can read.
USER_NAME=snapkgpu
USER_TREE=/tmp/snapkernel-user-tree
cleanup() { userdel -r "$USER_NAME" >/dev/null 2>&1 || true; rm -rf "$USER_TREE"; }
trap cleanup EXIT
cleanup
useradd --create-home --shell /bin/bash "$USER_NAME"
rm -rf "$USER_TREE" && cp -r "$REPO" "$USER_TREE" && chmod -R a+rX "$USER_TREE" "$SITE"
runuser -u "$USER_NAME" -- env -i PATH="$SITE/bin:/usr/local/bin:/usr/bin:/bin" HOME="/home/$USER_NAME" USER="$USER_NAME" \
  PYTHONPATH="$USER_TREE:$SITE" JUPYTER_PATH="$USER_TREE/share/jupyter" SNAPKERNEL_CRIU="$USER_TREE/.device/criu/criu" \
  SNAPKERNEL_STORE="/home/$USER_NAME/store" PYTHONUNBUFFERED=1 SESSIONS_LABEL=-user GPU_RUNS="${GPU_RUNS:-3}" \
  ${DEVICE_NOTEBOOK:+DEVICE_NOTEBOOK="$DEVICE_NOTEBOOK"} ${SNAPKERNEL_RESTORE_NETWORK:+SNAPKERNEL_RESTORE_NETWORK="$SNAPKERNEL_RESTORE_NETWORK"} \
  "$PYTHON" "$USER_TREE/tests/gpu/device_check.py" kernel sessions
