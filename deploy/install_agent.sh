#!/usr/bin/env bash
# Install the FedDST Edge agent as a systemd service on Raspberry Pi OS (64-bit) or Debian/Ubuntu.
#
#   sudo deploy/install_agent.sh --device-id dev-003 --broker mqtt://broker.lan:1883 \
#        [--password-file pw.txt] [--key-file dev-003.hex] [--source /path/to/feddst-edge.whl|DIR] \
#        [--dataset digits --partition 3/8] [--no-start]
#   sudo deploy/install_agent.sh --bundle dev-003.bundle.json [--dataset ...]   # from `feddst cloud devices enroll`
#
# What it does (idempotent; re-run to upgrade):
#   1. apt: python3 (>= 3.11), python3-venv, libopenblas0 (numpy/torch CPU maths), gcc + libc6-dev
#      (the install compiles the native sparse kernels) and libgomp1 (their OpenMP runtime)
#   2. a system user `feddst`, a venv in /opt/feddst/venv
#   3. pip install torch==2.13.0 (CPU wheel; see the note below), then feddst-edge[agent]; prints
#      whether the native kernels loaded (a loud warning, not a failure, when they did not)
#   4. /etc/feddst/agent.toml (settings, 0640 root:feddst), /etc/feddst/agent.env (FEDDST_PASSWORD...,
#      0600 root: systemd reads it as root and passes it to the agent), /etc/feddst/agent.key (HMAC key,
#      0640 root:feddst: the agent, user feddst, reads it but cannot change it), /var/lib/feddst (local data).
#      --bundle FILE takes the device id, broker URL, password, key, CA and coordinator public key from
#      the enrollment bundle (deploy/install_bundle.py writes agent.key, ca.crt and agent.env)
#   5. the systemd unit feddst-agent.service, enabled and started
#
# torch note: the project pins torch==2.13.0. On aarch64 (Raspberry Pi 4/5 with the 64-bit OS)
# the wheel on PyPI is the CPU build. On x86_64 PyPI's default wheel pulls CUDA libraries
# (GBs); this script installs from the CPU index instead. 32-bit Raspberry Pi OS (armv7l) has
# no torch wheels: install the 64-bit OS.
set -euo pipefail

DEVICE_ID=""
BROKER=""
PASSWORD_FILE=""
KEY_FILE=""
BUNDLE=""
SOURCE="feddst-edge[agent]"
DATASET="digits"
DATA_DIR=""
PARTITION=""
START=1
PREFIX=/opt/feddst
TORCH_VERSION=2.13.0
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "error: $*" >&2; exit 2; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --device-id) DEVICE_ID="$2"; shift 2 ;;
    --broker) BROKER="$2"; shift 2 ;;
    --password-file) PASSWORD_FILE="$2"; shift 2 ;;
    --key-file) KEY_FILE="$2"; shift 2 ;;
    --bundle) BUNDLE="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    --dataset) DATASET="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --partition) PARTITION="$2"; shift 2 ;;
    --no-start) START=0; shift ;;
    -h|--help) usage 0 ;;
    *) echo "unknown option $1" >&2; usage 2 ;;
  esac
done

[[ $EUID -eq 0 ]] || die "run as root (sudo)"
if [[ -n "$BUNDLE" ]]; then
  [[ -f "$BUNDLE" ]] || die "--bundle $BUNDLE: no such file"
  [[ -z "$KEY_FILE$PASSWORD_FILE" ]] || die "--bundle already holds the key and password: drop --key-file/--password-file"
  command -v python3 >/dev/null || die "--bundle needs python3 to read the bundle: apt-get install -y python3"
  mapfile -t BUNDLE_FIELDS < <(python3 "$HERE/install_bundle.py" show "$BUNDLE") || die "--bundle: unusable bundle"
  [[ ${#BUNDLE_FIELDS[@]} -eq 2 ]] || die "--bundle $BUNDLE: unusable bundle"
  [[ -z "$DEVICE_ID" || "$DEVICE_ID" == "${BUNDLE_FIELDS[0]}" ]] \
    || die "--device-id $DEVICE_ID does not match the bundle's device id ${BUNDLE_FIELDS[0]}"
  DEVICE_ID="${BUNDLE_FIELDS[0]}"
  [[ -n "$BROKER" ]] || BROKER="${BUNDLE_FIELDS[1]}"
fi
[[ -n "$DEVICE_ID" ]] || die "--device-id is required (e.g. dev-003)"
[[ "$DEVICE_ID" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$ ]] || die "--device-id '$DEVICE_ID': use 1-64 of A-Z a-z 0-9 _ . -"
[[ -n "$BROKER" ]] || die "--broker is required (e.g. mqtt://broker.lan:1883)"
[[ "$BROKER" =~ ^mqtts?:// ]] || die "--broker must start with mqtt:// or mqtts://"

ARCH="$(uname -m)"
case "$ARCH" in
  aarch64|arm64) TORCH_INDEX=() ;;
  x86_64|amd64) TORCH_INDEX=(--index-url https://download.pytorch.org/whl/cpu) ;;
  armv7l|armv6l) die "32-bit ARM ($ARCH) has no torch wheels: install the 64-bit Raspberry Pi OS" ;;
  *) echo "warning: untested architecture $ARCH; trying PyPI's torch wheel" >&2; TORCH_INDEX=() ;;
esac

echo "==> system packages"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3 python3-venv python3-pip libopenblas0 ca-certificates \
  gcc libc6-dev libgomp1 >/dev/null
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "python3 >= 3.11 is required (Debian 12 / Raspberry Pi OS bookworm or newer)"

echo "==> user and directories"
id feddst >/dev/null 2>&1 || useradd --system --home-dir /var/lib/feddst --shell /usr/sbin/nologin feddst
install -d -o root -g feddst -m 0750 /etc/feddst
install -d -o feddst -g feddst -m 0750 /var/lib/feddst
install -d -m 0755 "$PREFIX" "$PREFIX/docs"

echo "==> Python environment in $PREFIX/venv"
[[ -x "$PREFIX/venv/bin/python" ]] || python3 -m venv "$PREFIX/venv"
"$PREFIX/venv/bin/pip" install -q --upgrade pip wheel
"$PREFIX/venv/bin/pip" install -q "${TORCH_INDEX[@]}" "torch==$TORCH_VERSION"
if [[ -d "$SOURCE" ]]; then
  "$PREFIX/venv/bin/pip" install -q "$SOURCE[agent]"
else
  "$PREFIX/venv/bin/pip" install -q "$SOURCE"
fi
"$PREFIX/venv/bin/feddst" --version
NATIVE_CHECK='import feddst_core.native as n; print("native kernels:", n.status()); raise SystemExit(not n.available())'
if ! "$PREFIX/venv/bin/python" -c "$NATIVE_CHECK"; then
  if [[ "$SOURCE" == *.whl ]]; then
    FIX="re-run this script with --source pointing at the source tree or an sdist (a wheel built elsewhere may lack the kernels or not load here)"
  else
    FIX="reinstall from source: $PREFIX/venv/bin/pip install --force-reinstall --no-deps --no-binary feddst-edge '$SOURCE'"
  fi
  {
    echo "warning: ******************************************************************************"
    echo "warning: the native sparse kernels are NOT available (status line above)."
    echo "warning: The agent works, but trains with the slower torch kernels: sparse rounds cost"
    echo "warning: this device more time and memory than they need to."
    echo "warning: Fix: check that gcc works (apt-get install -y gcc libc6-dev libgomp1), then"
    echo "warning: $FIX"
    echo "warning: Check: $PREFIX/venv/bin/python -c 'import feddst_core.native as n; print(n.status())'"
    echo "warning: ******************************************************************************"
  } >&2
fi
[[ -f "$HERE/../docs/agent.md" ]] && install -m 0644 "$HERE/../docs/agent.md" "$PREFIX/docs/agent.md"

echo "==> settings in /etc/feddst"
if [[ -n "$BUNDLE" ]]; then
  python3 "$HERE/install_bundle.py" install "$BUNDLE" --etc /etc/feddst --group feddst \
    || die "--bundle: could not install $BUNDLE"
  echo "installed the bundle; delete $BUNDLE (it holds the device's secrets)"
elif [[ -n "$KEY_FILE" ]]; then
  install -o root -g feddst -m 0640 "$KEY_FILE" /etc/feddst/agent.key
elif [[ ! -f /etc/feddst/agent.key ]]; then
  echo "note: no --key-file: messages will not be signed (the coordinator may require keys)" >&2
fi
if [[ ! -f /etc/feddst/agent.toml ]]; then
  {
    echo "# FedDST Edge agent settings (see /opt/feddst/docs/agent.md). Env FEDDST_<NAME> overrides."
    echo "device_id = \"$DEVICE_ID\""
    echo "broker = \"$BROKER\""
    echo "dataset = \"$DATASET\""
    [[ -n "$DATA_DIR" ]] && echo "data_dir = \"$DATA_DIR\""
    [[ -n "$PARTITION" ]] && echo "partition = \"$PARTITION\""
    [[ -f /etc/feddst/agent.key ]] && echo "key_file = \"/etc/feddst/agent.key\""
    echo "threads = 1"
    echo "heartbeat_s = 5"
    echo "log_level = \"info\""
  } > /etc/feddst/agent.toml
  chown root:feddst /etc/feddst/agent.toml
  chmod 0640 /etc/feddst/agent.toml
else
  echo "keeping the existing /etc/feddst/agent.toml"
fi
if [[ -n "$PASSWORD_FILE" ]]; then
  umask 077
  printf 'FEDDST_PASSWORD=%s\n' "$(tr -d '\n' < "$PASSWORD_FILE")" > /etc/feddst/agent.env
  chown root:root /etc/feddst/agent.env
  chmod 0600 /etc/feddst/agent.env
fi

echo "==> systemd unit"
install -m 0644 "$HERE/systemd/feddst-agent.service" /etc/systemd/system/feddst-agent.service
systemctl daemon-reload
systemctl enable feddst-agent.service >/dev/null
if [[ $START -eq 1 ]]; then
  systemctl restart feddst-agent.service
  sleep 3
  systemctl --no-pager --lines=15 status feddst-agent.service || true
  echo "follow the logs with: journalctl -u feddst-agent -f"
else
  echo "installed; start with: systemctl start feddst-agent"
fi
