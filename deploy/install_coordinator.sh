#!/usr/bin/env bash
# Install the FedDST Edge coordinator (REST API + MQTT client) as a systemd service on Debian/Ubuntu.
#
#   sudo deploy/install_coordinator.sh --broker mqtt://127.0.0.1:1883 [--password-file coordinator.pw] \
#        [--device-keys device_keys.json] [--api-host 127.0.0.1] [--api-port 8080] \
#        [--source DIR|feddst-edge.tar.gz|feddst-edge.whl] [--torch auto|cpu-index|pypi-cpu|pypi] [--no-start]
#
# --source defaults to the source tree this script lives in (feddst-edge is on no package index).
#
# What it does (idempotent; re-run to upgrade):
#   1. apt: python3 (>= 3.11), python3-venv, gcc (native kernels), binutils
#   2. a system user `feddst`, a venv in /opt/feddst/venv (the one deploy/systemd/feddst-coordinator.service runs)
#   3. torch==2.13.0 CPU-only (as deploy/install_agent.sh), then feddst-edge with its [cloud] extra;
#      stops with a clear error if the coordinator cannot import
#   4. /etc/feddst/coordinator.toml (settings; the CloudSettings field names, see docs/coordinator.md),
#      /etc/feddst/coordinator.env (FEDDST_CLOUD_MQTT_PASSWORD, mode 0640), /etc/feddst/device_keys.json
#   5. the systemd unit feddst-coordinator.service (state in /var/lib/feddst-coordinator), enabled and
#      (without --no-start) started
#
# The broker is separate: mosquitto with deploy/mosquitto/feddst.conf and the password file / ACL from
# deploy/make_broker_acl.py (docs/agent.md, "Broker side").
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=deploy/install_common.sh
source "$HERE/install_common.sh"

BROKER=""
PASSWORD_FILE=""
DEVICE_KEYS=""
API_HOST="127.0.0.1"
API_PORT="8080"
MQTT_USERNAME="coordinator"
SOURCE=""
START=1

usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

parse_args() {
  while [[ $# -gt 0 ]]; do
    parse_common_option "$@"
    if [[ $CONSUMED -gt 0 ]]; then shift "$CONSUMED"; continue; fi
    case "$1" in
      --broker|--password-file|--device-keys|--api-host|--api-port|--mqtt-username)
        [[ $# -ge 2 ]] || die "$1 needs a value" ;;
    esac
    case "$1" in
      --broker) BROKER="$2"; shift 2 ;;
      --password-file) PASSWORD_FILE="$2"; shift 2 ;;
      --device-keys) DEVICE_KEYS="$2"; shift 2 ;;
      --api-host) API_HOST="$2"; shift 2 ;;
      --api-port) API_PORT="$2"; shift 2 ;;
      --mqtt-username) MQTT_USERNAME="$2"; shift 2 ;;
      --no-start) START=0; shift ;;
      -h|--help) usage 0 ;;
      *) echo "unknown option $1" >&2; usage 2 ;;
    esac
  done
}

check_args() {
  [[ $EUID -eq 0 ]] || die "run as root (sudo)"
  [[ -n "$BROKER" ]] || die "--broker is required (e.g. mqtt://127.0.0.1:1883)"
  [[ "$BROKER" =~ ^mqtts?://[^/]+$ ]] || die "--broker '$BROKER' must look like mqtt://HOST:PORT or mqtts://HOST:PORT"
  [[ "$API_PORT" =~ ^[0-9]+$ && "$API_PORT" -le 65535 ]] || die "--api-port '$API_PORT' is not a port number (0-65535)"
  [[ "$API_HOST" =~ ^[A-Za-z0-9.:_-]+$ ]] || die "--api-host '$API_HOST' is not a host name or address"
  [[ "$MQTT_USERNAME" =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$ ]] || die "--mqtt-username '$MQTT_USERNAME': use 1-64 of A-Z a-z 0-9 _ . -"
  [[ -z "$PASSWORD_FILE" || -r "$PASSWORD_FILE" ]] || die "--password-file $PASSWORD_FILE: cannot read it"
  if [[ -n "$DEVICE_KEYS" ]]; then
    [[ -r "$DEVICE_KEYS" ]] || die "--device-keys $DEVICE_KEYS: cannot read it"
    python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); assert isinstance(d, dict) and all(bytes.fromhex(v) for v in d.values())' \
      "$DEVICE_KEYS" 2>/dev/null || die "--device-keys $DEVICE_KEYS: not a JSON object {device id: hex key} (deploy/make_broker_acl.py --keys writes one)"
  fi
  check_common_options
}

install_coordinator_python() {
  make_venv
  install_torch
  install_feddst cloud
  check_imports coordinator cloud.app cloud.coordinator feddst_cli.cloud_command fastapi uvicorn paho.mqtt.client safetensors
  [[ -f "$HERE/../docs/coordinator.md" ]] && install -m 0644 "$HERE/../docs/coordinator.md" "$PREFIX/docs/coordinator.md"
  return 0
}

write_coordinator_settings() {
  step "settings in /etc/feddst"
  if [[ -n "$DEVICE_KEYS" ]]; then
    install -o root -g feddst -m 0640 "$DEVICE_KEYS" /etc/feddst/device_keys.json
  fi
  if [[ ! -f /etc/feddst/coordinator.toml ]]; then
    {
      echo "# FedDST Edge coordinator settings (see /opt/feddst/docs/coordinator.md). Env FEDDST_CLOUD_<NAME> overrides."
      echo "broker_url = \"$BROKER\""
      echo "mqtt_username = \"$MQTT_USERNAME\""
      echo "api_host = \"$API_HOST\""
      echo "api_port = $API_PORT"
      echo "state_dir = \"/var/lib/feddst-coordinator\""
      [[ -f /etc/feddst/device_keys.json ]] && echo "device_keys_file = \"/etc/feddst/device_keys.json\""
    } > /etc/feddst/coordinator.toml.tmp
    chown root:feddst /etc/feddst/coordinator.toml.tmp
    chmod 0640 /etc/feddst/coordinator.toml.tmp
    mv /etc/feddst/coordinator.toml.tmp /etc/feddst/coordinator.toml
  else
    echo "keeping the existing /etc/feddst/coordinator.toml"
  fi
  if [[ -n "$PASSWORD_FILE" ]]; then
    (umask 077; printf 'FEDDST_CLOUD_MQTT_PASSWORD=%s\n' "$(tr -d '\n' < "$PASSWORD_FILE")" > /etc/feddst/coordinator.env.tmp)
    chown root:feddst /etc/feddst/coordinator.env.tmp
    chmod 0640 /etc/feddst/coordinator.env.tmp
    mv /etc/feddst/coordinator.env.tmp /etc/feddst/coordinator.env
  fi
  "$VENV/bin/python" -c 'import sys; from pathlib import Path; from cloud.settings import CloudSettings; CloudSettings.load(Path(sys.argv[1]))' \
    /etc/feddst/coordinator.toml || die "/etc/feddst/coordinator.toml does not load (above): fix it or delete it and re-run"
}

main() {
  parse_args "$@"
  check_args
  install_system_packages
  step "user and directories"
  make_feddst_user
  install_coordinator_python
  write_coordinator_settings
  install_unit feddst-coordinator.service "$START"
}

main "$@"
