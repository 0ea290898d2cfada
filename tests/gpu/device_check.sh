#!/usr/bin/env bash
# On a lent NVIDIA machine (H100/H200), from the repository root, after tests/gpu/pack_device_bundle.sh
# ran here and .device travelled (carry: [".device"]). Prints (a) engine, (b) kernel, (c) timings.
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
