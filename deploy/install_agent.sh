#!/usr/bin/env bash
# Install the FedDST Edge agent as a systemd service on Raspberry Pi OS (64-bit) or Debian/Ubuntu.
#
#   sudo deploy/install_agent.sh --device-id dev-003 --broker mqtt://broker.lan:1883 \
#        --coordinator-public-key HEX|FILE [--password-file pw.txt] [--key-file dev-003.hex] \
#        [--source DIR|feddst-edge.tar.gz|feddst-edge.whl] \
#        [--dataset digits --partition 3/8] [--torch auto|cpu-index|pypi-cpu|pypi] [--torch-wheel FILE] [--no-start]
#   sudo deploy/install_agent.sh --bundle dev-003.bundle.json [--dataset ...]   # from `feddst cloud devices enroll`
#
# --source defaults to the source tree this script lives in (feddst-edge is on no package index).
# --coordinator-public-key: the 64 hex characters `feddst cloud keys public` prints, or a file holding them;
# without it (or a --bundle, which carries it) the agent refuses to start until coordinator_public_key is set.
#
# What it does (idempotent; re-run to upgrade):
#   1. apt: python3 (>= 3.11), python3-venv, libopenblas0 (numpy/torch CPU maths), gcc + libc6-dev
#      (the install compiles the native sparse kernels), libgomp1 (their OpenMP runtime), binutils
#   2. a system user `feddst`, a venv in /opt/feddst/venv
#   3. torch==2.13.0 CPU-only (see deploy/install_common.sh: the PyTorch CPU index when it answers,
#      else PyPI's wheel without its ~2.9 GB of NVIDIA libraries), then feddst-edge with its [agent]
#      extra built on this machine; stops with a clear error if the agent cannot import, prints
#      whether the native kernels loaded (a loud warning, not a failure, when they did not)
#   4. /etc/feddst/agent.toml (settings, 0640 root:feddst; --coordinator-public-key sets its
#      coordinator_public_key, also in a kept agent.toml, e.g. after a key rotation), /etc/feddst/agent.env (FEDDST_PASSWORD...,
#      0600 root: systemd reads it as root and passes it to the agent), /etc/feddst/agent.key (HMAC key,
#      0640 root:feddst: the agent, user feddst, reads it but cannot change it), /var/lib/feddst (local data).
#      --bundle FILE takes the device id, broker URL, password, key, CA and coordinator public key from
#      the enrollment bundle (deploy/install_bundle.py writes agent.key, ca.crt and agent.env)
#   5. the systemd unit feddst-agent.service, enabled and (without --no-start) started
#
# 32-bit Raspberry Pi OS (armv7l) has no torch wheels: install the 64-bit OS.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/install_common.sh
source "$HERE/install_common.sh"

DEVICE_ID=""
BROKER=""
PASSWORD_FILE=""
KEY_FILE=""
COORDINATOR_KEY_ARG=""
COORDINATOR_KEY=""
BUNDLE=""
SOURCE=""
DATASET="digits"
DATA_DIR=""
PARTITION=""
START=1

usage() { sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    parse_common_option "$@"
    if [[ $CONSUMED -gt 0 ]]; then shift "$CONSUMED"; continue; fi
    case "$1" in
      --device-id|--broker|--password-file|--key-file|--coordinator-public-key|--bundle|--dataset|--data-dir|--partition)
        [[ $# -ge 2 ]] || die "$1 needs a value" ;;
    esac
    case "$1" in
      --device-id) DEVICE_ID="$2"; shift 2 ;;
      --broker) BROKER="$2"; shift 2 ;;
      --password-file) PASSWORD_FILE="$2"; shift 2 ;;
      --key-file) KEY_FILE="$2"; shift 2 ;;
      --coordinator-public-key) COORDINATOR_KEY_ARG="$2"; shift 2 ;;
      --bundle) BUNDLE="$2"; shift 2 ;;
      --dataset) DATASET="$2"; shift 2 ;;
      --data-dir) DATA_DIR="$2"; shift 2 ;;
      --partition) PARTITION="$2"; shift 2 ;;
      --no-start) START=0; shift ;;
      -h|--help) usage 0 ;;
      *) echo "unknown option $1" >&2; usage 2 ;;
    esac
  done
}

read_bundle() {
  [[ -f "$BUNDLE" ]] || die "--bundle $BUNDLE: no such file"
  [[ -z "$KEY_FILE$PASSWORD_FILE" ]] || die "--bundle already holds the key and password: drop --key-file/--password-file"
  [[ -z "$COORDINATOR_KEY_ARG" ]] || die "--bundle already holds the coordinator public key: drop --coordinator-public-key"
  command -v python3 >/dev/null || die "--bundle needs python3 to read the bundle: apt-get install -y python3"
  mapfile -t BUNDLE_FIELDS < <(python3 "$HERE/install_bundle.py" show "$BUNDLE") || die "--bundle: unusable bundle"
  [[ ${#BUNDLE_FIELDS[@]} -eq 2 ]] || die "--bundle $BUNDLE: unusable bundle"
  [[ -z "$DEVICE_ID" || "$DEVICE_ID" == "${BUNDLE_FIELDS[0]}" ]] \
    || die "--device-id $DEVICE_ID does not match the bundle's device id ${BUNDLE_FIELDS[0]}"
  DEVICE_ID="${BUNDLE_FIELDS[0]}"
  [[ -n "$BROKER" ]] || BROKER="${BUNDLE_FIELDS[1]}"
}

check_args() {
  [[ $EUID -eq 0 ]] || die "run as root (sudo)"
  [[ -z "$BUNDLE" ]] || read_bundle
  [[ -n "$DEVICE_ID" ]] || die "--device-id is required (e.g. dev-003)"
  [[ "$DEVICE_ID" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$ ]] || die "--device-id '$DEVICE_ID': use 1-64 of A-Z a-z 0-9 _ . -"
  [[ -n "$BROKER" ]] || die "--broker is required (e.g. mqtt://broker.lan:1883)"
  [[ "$BROKER" =~ ^mqtts?:// ]] || die "--broker must start with mqtt:// or mqtts://"
  [[ -z "$PASSWORD_FILE" || -r "$PASSWORD_FILE" ]] || die "--password-file $PASSWORD_FILE: cannot read it"
  [[ -z "$KEY_FILE" || -r "$KEY_FILE" ]] || die "--key-file $KEY_FILE: cannot read it"
  [[ -z "$COORDINATOR_KEY_ARG" ]] || read_coordinator_key
  check_common_options
}

# --coordinator-public-key HEX|FILE -> COORDINATOR_KEY (64 lower-case hex characters)
read_coordinator_key() {
  local value="$COORDINATOR_KEY_ARG"
  if [[ ! "$value" =~ ^[0-9a-fA-F]{64}$ ]]; then
    [[ -f "$value" && -r "$value" ]] || die "--coordinator-public-key '$value': neither 64 hex characters nor a readable file (give what \`feddst cloud keys public\` prints, or a file holding it)"
    value="$(tr -d ' \t\r\n' < "$value")"
    [[ "$value" =~ ^[0-9a-fA-F]{64}$ ]] || die "--coordinator-public-key $COORDINATOR_KEY_ARG: the file does not hold a key of 64 hex characters (save what \`feddst cloud keys public\` prints)"
  fi
  COORDINATOR_KEY="${value,,}"
}

# Sets coordinator_public_key in /etc/feddst/agent.toml (replacing the line if there is one), same owner and mode.
set_coordinator_key() {
  local toml=/etc/feddst/agent.toml
  grep -v '^coordinator_public_key *=' "$toml" > "$toml.tmp" || true
  echo "coordinator_public_key = \"$COORDINATOR_KEY\"  # feddst cloud keys public" >> "$toml.tmp"
  chown root:feddst "$toml.tmp"
  chmod 0640 "$toml.tmp"
  mv "$toml.tmp" "$toml"
  echo "coordinator public key: $COORDINATOR_KEY (agents drop coordinator messages it did not sign)"
}

install_agent_python() {
  make_venv
  install_torch
  install_feddst agent
  check_imports agent edge_agent.agent feddst_cli.agent_command paho.mqtt.client psutil PIL cryptography
  check_native_kernels
  [[ -f "$HERE/../docs/agent.md" ]] && install -m 0644 "$HERE/../docs/agent.md" "$PREFIX/docs/agent.md"
  return 0
}

write_agent_settings() {
  step "settings in /etc/feddst"
  install -d -o feddst -g feddst -m 0750 /var/lib/feddst
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
      echo "broker_url = \"$BROKER\""
      echo "dataset = \"$DATASET\""
      [[ -n "$DATA_DIR" ]] && echo "data_dir = \"$DATA_DIR\""
      [[ -n "$PARTITION" ]] && echo "partition = \"$PARTITION\""
      [[ -f /etc/feddst/agent.key ]] && echo "key_file = \"/etc/feddst/agent.key\""
      echo "threads = 1"
      echo "heartbeat_s = 5"
      echo "log_level = \"info\""
    } > /etc/feddst/agent.toml.tmp
    chown root:feddst /etc/feddst/agent.toml.tmp
    chmod 0640 /etc/feddst/agent.toml.tmp
    mv /etc/feddst/agent.toml.tmp /etc/feddst/agent.toml
  else
    echo "keeping the existing /etc/feddst/agent.toml"
  fi
  if [[ -n "$COORDINATOR_KEY" ]]; then
    set_coordinator_key
  elif [[ -z "$BUNDLE" ]] && ! grep -qs '^coordinator_public_key *=' /etc/feddst/agent.toml; then
    echo "note: no --coordinator-public-key: the agent will refuse to start until coordinator_public_key is set in /etc/feddst/agent.toml (\`feddst cloud keys public\` on the coordinator)" >&2
  fi
  if [[ -n "$PASSWORD_FILE" ]]; then
    (umask 077; printf 'FEDDST_PASSWORD=%s\n' "$(tr -d '\n' < "$PASSWORD_FILE")" > /etc/feddst/agent.env.tmp)
    chown root:root /etc/feddst/agent.env.tmp
    chmod 0600 /etc/feddst/agent.env.tmp
    mv /etc/feddst/agent.env.tmp /etc/feddst/agent.env
  fi
}

main() {
  parse_args "$@"
  check_args
  install_system_packages
  step "user and directories"
  make_feddst_user
  install_agent_python
  write_agent_settings
  install_unit feddst-agent.service "$START"
}

main "$@"
