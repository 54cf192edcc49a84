#!/usr/bin/env bash
# The installed package, as a new user gets it: build the wheel, install it non-editable into a fresh virtual
# environment with the base dependencies only (no torch), and run the thin client's commands from it, away from
# the source tree. Called by `make test`. BUILD_PYTHON builds the wheel (it needs setuptools); PYTHON makes the venv.
set -euo pipefail
BUILD_PYTHON=${BUILD_PYTHON:-.venv/bin/python}
PYTHON=${PYTHON:-python3}
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$root"
"$BUILD_PYTHON" -m pip wheel -q --no-deps --no-build-isolation . -w "$work/dist" 2>"$work/build.log" \
  || { cat "$work/build.log"; exit 1; }
wheel=$(ls "$work"/dist/corx-*.whl)

# every tracked module and config of the package is in the wheel, and no weights are
git ls-files 'clients/corx/*.py' 'clients/corx/data/*' 'bundle/*.py' 'bundle/configs/*' 'triton_repo/*/1/model.py' \
  | sed -e 's|^clients/corx/|corx/|' -e 's|^bundle/|corx_bundle/|' -e 's|^triton_repo/|corx_bundle/triton_repo/|' \
  | sort > "$work/expected"
"$BUILD_PYTHON" -c "import sys, zipfile; print('\n'.join(sorted(zipfile.ZipFile(sys.argv[1]).namelist())))" "$wheel" \
  > "$work/listed"
missing=$(comm -23 "$work/expected" "$work/listed")
[ -z "$missing" ] || { echo "wheel check: missing from $(basename "$wheel"):"; echo "$missing"; exit 1; }
! grep -q '\.pt$' "$work/listed" || { echo "wheel check: weights in the wheel"; exit 1; }

"$PYTHON" -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q "$wheel" 2>"$work/install.log" || { cat "$work/install.log"; exit 1; }
cd "$work"
venv/bin/python -c "import importlib.util as u, sys; sys.exit(1 if u.find_spec('torch') else 0)" \
  || { echo "wheel check: torch is installed in the fresh venv"; exit 1; }
venv/bin/corx phantom ph --patients 1 --downsample 4 > phantom.log
venv/bin/corx tia ph/P001/patient.json tia_out > tia.log
venv/bin/corx pipeline ph/P001/patient.json pipe_out --method identity > pipeline.log
for f in tia_out/tia.nii.gz pipe_out/tia.nii.gz pipe_out/report.html; do
  [ -s "$f" ] || { echo "wheel check: $f not written"; ls -R tia_out pipe_out; exit 1; }
done
if venv/bin/corx pipeline ph/P001/patient.json pipe_corx --method corx 2> corx.err; then
  echo "wheel check: --method corx ran without torch"; exit 1
fi
grep -q "needs PyTorch" corx.err && ! grep -q Traceback corx.err \
  || { echo "wheel check: no one-line error without torch:"; cat corx.err; exit 1; }
echo "wheel check: $(basename "$wheel") ($(wc -l < listed) files) installed without torch; phantom, tia, pipeline ok"
