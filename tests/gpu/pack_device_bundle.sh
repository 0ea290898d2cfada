#!/usr/bin/env bash
# Run here (after `make setup`): gathers what tests/gpu/device_check.sh needs on a lent GPU machine that
# has PyTorch but no CRIU, no Jupyter packages and no network, into .device/ (ignored by git).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUNDLE=.device
rm -rf "$BUNDLE/criu" "$BUNDLE/py"
mkdir -p "$BUNDLE/criu/lib" "$BUNDLE/py" "$BUNDLE/wheels"

# CRIU and the shared libraries it links (all but glibc's own), behind a wrapper that finds them.
install -m 0755 .venv/bin/criu "$BUNDLE/criu/criu.real"
ldd .venv/bin/criu | awk '$3 ~ /^\// {print $3}' | grep -v -E '/(libc|libm|libpthread|libdl|librt)\.so' |
  xargs -I{} cp -L {} "$BUNDLE/criu/lib/"
cat > "$BUNDLE/criu/criu" <<'WRAP'
#!/bin/sh
here=$(dirname "$(readlink -f "$0")")
LD_LIBRARY_PATH="$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "$here/criu.real" "$@"
WRAP
chmod 0755 "$BUNDLE/criu/criu"

# pycriu is pure Python; the Jupyter packages come as Python 3.12 wheels (the device's Python).
cp -r .venv/lib/python3*/site-packages/pycriu "$BUNDLE/py/"
.venv/bin/pip freeze 2>/dev/null | grep -i -E '^(asttokens|comm|debugpy|executing|fastjsonschema|ipykernel|ipython|ipython.pygments.lexers|jedi|jsonschema|jsonschema-specifications|jupyter.client|jupyter.core|matplotlib-inline|nbclient|nbformat|nest.asyncio2|parso|pexpect|platformdirs|prompt.toolkit|protobuf|ptyprocess|pure.eval|pyzmq|referencing|rpds-py|stack.data|tornado|traitlets|typing.extensions|wcwidth)==' \
  >"$BUNDLE/requirements.txt"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform manylinux_2_34_x86_64 --platform manylinux_2_31_x86_64 --platform any \
  -d "$BUNDLE/wheels" -r "$BUNDLE/requirements.txt"
du -sh "$BUNDLE"
