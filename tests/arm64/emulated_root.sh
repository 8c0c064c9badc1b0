#!/usr/bin/env bash
# A Debian 12 (bookworm) arm64 root run through qemu-user on an x86-64 host, cached between runs.
#
#   tests/arm64/emulated_root.sh ensure              # host packages, binfmt, the root (built once), mounts
#   tests/arm64/emulated_root.sh sync-source SRC     # copy the git-tracked files of SRC to ROOT/src/feddst-edge
#   tests/arm64/emulated_root.sh run CMD [ARG...]    # run CMD inside the root (clean environment, as root)
#   tests/arm64/emulated_root.sh umount              # undo the mounts (the root itself stays cached)
#   tests/arm64/emulated_root.sh clean               # delete the cached root (the next ensure rebuilds it)
#
# ROOT: $FEDDST_ARM64_ROOT, default /var/cache/feddst-arm64/root (never inside the repository). Run as
# root. The root shares the host's network namespace, so a broker or coordinator on the host's
# loopback is reachable from inside it. Emulation details handled here:
#   * /proc/cpuinfo inside the root is the host's (x86) under qemu-user; torch's cpuinfo library then
#     finds no ARM cores and crashes at import, so a Raspberry Pi 4 cpuinfo (Cortex-A72, 2 cores as
#     the host has) is bind-mounted over it;
#   * the host's CA bundle replaces the root's, so HTTPS to the package registries works where the
#     host reaches them through a TLS-inspecting proxy.
set -euo pipefail

ROOT="${FEDDST_ARM64_ROOT:-/var/cache/feddst-arm64/root}"
CACHE="$(dirname "$ROOT")"
MIRROR="${FEDDST_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# Preinstalled in the root so install_agent.sh's apt step has little to do under emulation.
INCLUDE="python3,python3-venv,python3-dev,gcc,libc6-dev,libgomp1,binutils,systemd,ca-certificates"

die() { echo "error: $*" >&2; exit 2; }
note() { echo "[arm64-root] $*" >&2; }

host_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [[ -e /usr/libexec/qemu-binfmt/aarch64-binfmt-P || -x /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if [[ ${#missing[@]} -gt 0 ]]; then
    note "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

binfmt() {
  if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc (needs root)"
  fi
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  grep -qs enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 \
    || die "qemu-aarch64 is not registered with binfmt_misc (update-binfmts --enable qemu-aarch64)"
}

build_root() {
  [[ -x "$ROOT/usr/bin/python3" ]] && return 0
  mkdir -p "$CACHE"
  rm -rf "$ROOT.tmp"
  note "building $ROOT with debootstrap (a few minutes; cached afterwards)"
  local t0=$SECONDS
  debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" bookworm "$ROOT.tmp" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || die "debootstrap failed: see $CACHE/debootstrap.log"
  mv "$ROOT.tmp" "$ROOT"  # only a complete root is ever used
  echo "$((SECONDS - t0))" > "$CACHE/debootstrap.seconds"
  note "root built in $((SECONDS - t0)) s"
}

fake_cpuinfo() {
  local cores i
  cores="$(nproc)"
  mkdir -p "$CACHE/emul"
  {
    for ((i = 0; i < cores; i++)); do
      printf 'processor\t: %d\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\n' "$i"
      printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n'
    done
    printf 'Hardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B (emulated)\n'
  } > "$CACHE/emul/cpuinfo"
}

mount_all() {
  local d
  for d in proc sys dev dev/pts; do
    mountpoint -q "$ROOT/$d" || mount --bind "/$d" "$ROOT/$d"
  done
  fake_cpuinfo
  # a file bind-mounted over a file: mountpoint(1) cannot tell, /proc/self/mountinfo can
  grep -qs " $ROOT/proc/cpuinfo " /proc/self/mountinfo || mount --bind "$CACHE/emul/cpuinfo" "$ROOT/proc/cpuinfo"
  cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  cp /etc/resolv.conf "$ROOT/etc/resolv.conf" 2>/dev/null || true
}

umount_all() {
  local d
  grep -qs " $ROOT/proc/cpuinfo " /proc/self/mountinfo && umount "$ROOT/proc/cpuinfo"
  for d in dev/pts dev sys proc; do
    if mountpoint -q "$ROOT/$d"; then umount "$ROOT/$d" || umount -l "$ROOT/$d"; fi
  done
}

sync_source() {
  local src="$1"
  [[ -f "$src/pyproject.toml" ]] || die "sync-source $src: not a source tree"
  rm -rf "$ROOT/src/feddst-edge"
  mkdir -p "$ROOT/src/feddst-edge"
  # the tracked files plus new ones not yet committed (what `git status` shows), never build output
  (cd "$src" && git ls-files --cached --others --exclude-standard -z) \
    | (cd "$src" && tar --null -T - -cf -) | tar -C "$ROOT/src/feddst-edge" -xf -
}

run_in_root() {
  exec chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 OMP_NUM_THREADS=1 "$@"
}

[[ $EUID -eq 0 ]] || die "run as root (chroot, mount and debootstrap need it)"
case "${1:-}" in
  ensure) host_packages; binfmt; build_root; mount_all; echo "$ROOT" ;;
  sync-source) [[ $# -eq 2 ]] || die "sync-source needs the source tree"; sync_source "$2" ;;
  run) shift; [[ $# -gt 0 ]] || die "run needs a command"; run_in_root "$@" ;;
  umount) umount_all ;;
  clean) umount_all; rm -rf "$ROOT" "$ROOT.tmp" ;;
  *) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
