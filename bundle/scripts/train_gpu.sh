#!/usr/bin/env bash
# One device call: install the carried wheels (monai, nibabel, pytorch-ignite; the GPU machine has torch only),
# then train (python -m scripts.train_gpu, run from bundle/). Arguments go to scripts/train_gpu.py.
#   bash bundle/scripts/train_gpu.sh --minutes 9 --variants corx          # on the device, OUT set by the tool
#   OUT=/tmp/dry bash bundle/scripts/train_gpu.sh --tiny                  # CPU dry run
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
python="${PYTHON:-python3}"
if compgen -G "$root/.whl/*.whl" > /dev/null; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/corx_site "$root"/.whl/*.whl
    export PYTHONPATH="/tmp/corx_site${PYTHONPATH:+:$PYTHONPATH}"
fi
cd "$root/bundle"
export PYTHONUNBUFFERED=1
exec "$python" -m scripts.train_gpu "$@"
