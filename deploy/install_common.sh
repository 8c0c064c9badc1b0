# Functions shared by deploy/install_agent.sh and deploy/install_coordinator.sh (sourced, not run).
#
# The Python side of an install: a venv, torch (CPU-only, small), the feddst-edge package with an
# extra ([agent] or [cloud]) built from a checkout, an sdist or a wheel, and checks that fail early
# with a clear message when the installed program cannot start.
#
# torch modes (--torch MODE):
#   auto       the PyTorch CPU wheel index when it answers, else pypi-cpu (default)
#   cpu-index  the CPU wheel index only (--torch-index URL, default https://download.pytorch.org/whl/cpu)
#   pypi-cpu   PyPI's torch wheel with --no-deps plus its pure-Python dependencies, and stub libraries
#              for the NVIDIA libraries it links against (deploy/torch_cuda_stubs.py): CPU-only, no
#              nvidia-* wheels. On aarch64 PyPI's torch 2.13.0 is the CUDA 13 build: with its NVIDIA
#              wheels the venv is ~4.6 GB, this way ~1.2 GB (measured, docs/results.md).
#   pypi       PyPI's default resolution (on aarch64 and x86_64 this pulls ~2.9 GB of CUDA libraries)
# --torch-wheel FILE installs torch from a wheel file you copied to the device (no download), as
# pypi-cpu does (a CPU wheel needs no stubs; the stub step then does nothing).

TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCH_MODE="${TORCH_MODE:-auto}"
TORCH_INDEX="${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
TORCH_WHEEL="${TORCH_WHEEL:-}"
PREFIX="${PREFIX:-/opt/feddst}"
VENV="$PREFIX/venv"

die() { echo "error: $*" >&2; exit 2; }
step() { echo "==> $*"; }

# Options every install script accepts: parse_common_option "$@" sets CONSUMED to the number of
# arguments it took (0: not one of ours).
parse_common_option() {
  CONSUMED=0
  case "$1" in
    --source|--torch|--torch-index|--torch-wheel) [[ $# -ge 2 ]] || die "$1 needs a value" ;;
    *) return 0 ;;
  esac
  case "$1" in
    --source) SOURCE="$2" ;;
    --torch) TORCH_MODE="$2" ;;
    --torch-index) TORCH_INDEX="$2" ;;
    --torch-wheel) TORCH_WHEEL="$2" ;;
  esac
  CONSUMED=2
}

check_common_options() {
  case "$TORCH_MODE" in
    auto|cpu-index|pypi-cpu|pypi) ;;
    *) die "--torch '$TORCH_MODE': use auto, cpu-index, pypi-cpu or pypi" ;;
  esac
  if [[ -n "$TORCH_WHEEL" ]]; then
    [[ -f "$TORCH_WHEEL" && "$TORCH_WHEEL" == *.whl ]] || die "--torch-wheel '$TORCH_WHEEL' is not a .whl file"
    TORCH_WHEEL="$(cd "$(dirname "$TORCH_WHEEL")" && pwd)/$(basename "$TORCH_WHEEL")"
  fi
  if [[ -z "${SOURCE:-}" ]]; then
    # Default: the checkout (or unpacked sdist) this script lives in.
    grep -qs '^name = "feddst-edge"' "$HERE/../pyproject.toml" \
      || die "no --source given and $HERE/.. is not a FedDST Edge source tree: pass --source DIR|FILE.tar.gz|FILE.whl"
    SOURCE="$(cd "$HERE/.." && pwd)"
  fi
  if [[ -d "$SOURCE" ]]; then
    grep -qs '^name = "feddst-edge"' "$SOURCE/pyproject.toml" \
      || die "--source $SOURCE: no pyproject.toml of feddst-edge there (give the source tree's top directory)"
  elif [[ -f "$SOURCE" ]]; then
    [[ "$SOURCE" == *.whl || "$SOURCE" == *.tar.gz ]] || die "--source $SOURCE: expected a .whl, a .tar.gz sdist or a directory"
  else
    die "--source $SOURCE: no such file or directory (feddst-edge is on no package index: give the source tree, an sdist or a wheel)"
  fi
  SOURCE="$(cd "$(dirname "$SOURCE")" && pwd)/$(basename "$SOURCE")"
  case "$(uname -m)" in
    armv7l|armv6l) die "32-bit ARM ($(uname -m)) has no torch wheels: install the 64-bit Raspberry Pi OS" ;;
  esac
}

install_system_packages() {
  step "system packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # gcc + libc6-dev: the native kernels are compiled at install; binutils (readelf): torch_cuda_stubs.py
  apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip libopenblas0 ca-certificates \
    gcc libc6-dev libgomp1 binutils "$@" >/dev/null
  python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
    || die "python3 >= 3.11 is required (Debian 12 / Raspberry Pi OS bookworm or newer)"
}

make_feddst_user() {
  id feddst >/dev/null 2>&1 || useradd --system --home-dir /var/lib/feddst --shell /usr/sbin/nologin feddst
  install -d -o root -g feddst -m 0750 /etc/feddst
  install -d -m 0755 "$PREFIX" "$PREFIX/docs"
}

make_venv() {
  step "Python environment in $VENV"
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip wheel packaging
}

cpu_index_reachable() {
  "$VENV/bin/python" - "$TORCH_INDEX" <<'EOF' >/dev/null 2>&1
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=8).read(1)
EOF
}

# torch without its CUDA wheels: the wheel with --no-deps, its other requirements, stubs if needed.
install_torch_without_cuda() {
  local what="torch==$TORCH_VERSION"
  [[ -n "$TORCH_WHEEL" ]] && what="$TORCH_WHEEL"
  "$VENV/bin/pip" install -q --no-deps "$what"
  local deps
  deps="$("$VENV/bin/python" - <<'EOF'
import importlib.metadata as md
from packaging.requirements import Requirement
for line in md.requires("torch") or []:
    req = Requirement(line)
    name = req.name.lower()
    if name.startswith(("nvidia-", "cuda-", "triton")):
        continue  # the GPU runtime: what this install leaves out
    if req.marker is None or req.marker.evaluate({"extra": ""}):
        req.marker = None
        print(req)
EOF
)"
  # numpy too: torch warns without it, and the package needs it anyway
  # shellcheck disable=SC2086  # one requirement per word
  "$VENV/bin/pip" install -q $deps numpy
  "$VENV/bin/python" "$HERE/torch_cuda_stubs.py" \
    || die "could not make torch CPU-only (above); try --torch pypi (large: CUDA libraries) or --torch-wheel FILE"
}

install_torch() {
  local mode="$TORCH_MODE"
  if [[ -n "$TORCH_WHEEL" ]]; then
    mode="pypi-cpu"
  elif [[ "$mode" == auto ]]; then
    if cpu_index_reachable; then mode="cpu-index"; else
      echo "note: the CPU wheel index $TORCH_INDEX does not answer; using PyPI's torch without its CUDA libraries" >&2
      mode="pypi-cpu"
    fi
  fi
  step "torch $TORCH_VERSION ($mode)"
  case "$mode" in
    cpu-index) "$VENV/bin/pip" install -q --index-url "$TORCH_INDEX" "torch==$TORCH_VERSION" \
                 || die "torch from $TORCH_INDEX failed; try --torch pypi-cpu" ;;
    pypi-cpu) install_torch_without_cuda ;;
    pypi) "$VENV/bin/pip" install -q "torch==$TORCH_VERSION" ;;
  esac
  "$VENV/bin/python" -c 'import torch; torch.set_num_threads(1); x = torch.ones(2, 2, requires_grad=True); (x * x).sum().backward(); print("torch", torch.__version__, "works on the CPU")' \
    || die "torch does not import or compute in $VENV (above); try another --torch mode"
}

# Prints the path of a feddst-edge wheel built for this machine from $SOURCE (or $SOURCE itself).
feddst_wheel() {
  local work="$1"
  if [[ "$SOURCE" == *.whl ]]; then echo "$SOURCE"; return; fi
  local tree="$work/src"
  mkdir -p "$tree"
  if [[ -d "$SOURCE" ]]; then  # a copy: the build must not write into (or pick up builds from) the checkout
    tar -C "$SOURCE" --exclude=./.git --exclude=./build --exclude=./dist --exclude=./runs \
        --exclude='*.so' --exclude=__pycache__ --exclude='*.egg-info' -cf - . | tar -C "$tree" -xf -
  else
    tar -C "$tree" --strip-components=1 -xzf "$SOURCE"
  fi
  "$VENV/bin/pip" wheel -q --no-deps -w "$work/dist" "$tree" >&2 || die "building feddst-edge from $SOURCE failed (above)"
  ls "$work"/dist/feddst_edge-*.whl
}

# install_feddst EXTRA: the package and the EXTRA's dependencies, keeping the torch installed above.
install_feddst() {
  local extra="$1" work wheel
  step "feddst-edge[$extra] from $SOURCE"
  work="$(mktemp -d)"
  wheel="$(feddst_wheel "$work")"
  "$VENV/bin/python" "$HERE/wheel_requirements.py" "$wheel" --extra "$extra" --exclude torch > "$work/requirements.txt" \
    || die "cannot read the requirements of $wheel"
  "$VENV/bin/pip" install -q -r "$work/requirements.txt"
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "$wheel"
  rm -rf "$work"
  "$VENV/bin/feddst" --version
}

# check_imports WHAT MODULE...: the installed program can start (else stop now, not in a restart loop).
check_imports() {
  local what="$1"; shift
  local code="import importlib, sys
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        sys.exit(f'error: the $what cannot start: import {name} failed: {exc}')"
  "$VENV/bin/python" -c "$code" "$@" \
    || die "the $what's dependencies are missing from $VENV: re-run this script (it installs feddst-edge with its extra)"
}

check_native_kernels() {
  local check='import feddst_core.native as n; print("native kernels:", n.status()); raise SystemExit(not n.available())'
  "$VENV/bin/python" -c "$check" && return 0
  {
    echo "warning: ******************************************************************************"
    echo "warning: the native sparse kernels are NOT available (status line above)."
    echo "warning: The agent works, but trains with the slower torch kernels: sparse rounds cost"
    echo "warning: this device more time and memory than they need to."
    echo "warning: Fix: check that gcc works (apt-get install -y gcc libc6-dev libgomp1), then re-run"
    echo "warning: this script with --source pointing at the source tree or an sdist (a wheel built"
    echo "warning: elsewhere may lack the kernels or not load here)."
    echo "warning: Check: $VENV/bin/python -c 'import feddst_core.native as n; print(n.status())'"
    echo "warning: ******************************************************************************"
  } >&2
}

install_unit() {
  local unit="$1" start="$2"
  step "systemd unit $unit"
  install -m 0644 "$HERE/systemd/$unit" "/etc/systemd/system/$unit"
  if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify "/etc/systemd/system/$unit" 2>&1 | grep -v -e 'not executable' -e 'No such file' >&2 || true
  fi
  if [[ -d /run/systemd/system ]]; then
    systemctl daemon-reload
    systemctl enable "$unit" >/dev/null
  else  # no running systemd (a container or chroot): enable by link, as systemctl would
    install -d /etc/systemd/system/multi-user.target.wants
    ln -sf "/etc/systemd/system/$unit" "/etc/systemd/system/multi-user.target.wants/$unit"
  fi
  if [[ "$start" -eq 1 ]]; then
    [[ -d /run/systemd/system ]] || die "systemd is not running here: start the service by hand or use --no-start"
    systemctl restart "$unit"
    sleep 3
    systemctl --no-pager --lines=15 status "$unit" || true
    echo "follow the logs with: journalctl -u ${unit%.service} -f"
  else
    echo "installed; start with: systemctl start $unit"
  fi
}
