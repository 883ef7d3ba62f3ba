#!/usr/bin/env bash
# Build (once) the environment that holds TFX: a Debian trixie root made with debootstrap, because
# tfx 1.21 (the only release on the index) needs ml-metadata 1.21, whose only Linux wheel needs glibc
# 2.39, and Debian 12 has 2.36. Steps as verified in ../shared/STACK.md.
#
#   sudo pipelines/tfx/build_env.sh      # first time: several minutes, about 4.5 GB; then instant
#
# The root lives outside any clone, at $TFREC_TOWERS_TFX_ROOT (default ~/.cache/tfrec_towers/tfx-trixie),
# so every checkout and CI run reuses it. It is ready when DIR/.tfrec_towers_env_ok holds the hash of
# the requirement list below; otherwise the build resumes (or starts over where debootstrap never
# finished). Needs root (debootstrap, chroot), the host's Debian mirror and PyPI. Prints one
# "[tfx-env]" line per step; exits non-zero naming the failed step and quoting the end of its log.
# Environment: TFREC_TOWERS_TFX_ROOT, TFREC_TOWERS_DEBIAN_MIRROR (default: the host's apt mirror).
set -euo pipefail

ROOT=${TFREC_TOWERS_TFX_ROOT:-$HOME/.cache/tfrec_towers/tfx-trixie}
# scann is left out on purpose: scann 1.4.2's ops do not load on TF 2.21, and TFRS, which only catches
# ImportError around `from scann import scann_ops`, then fails to import. tensorboard: training writes
# TensorBoard logs, and TF 2.21 no longer pulls it in.
REQS="tfx==1.21.0 tf-keras==2.21.0 tensorflow-recommenders==0.7.7 tensorflow-text==2.21.1 tensorboard pyyaml pandas matplotlib"
MARK="$ROOT/.tfrec_towers_env_ok"
STAGE="$ROOT/.tfrec_towers_debootstrap_ok"
WANT=$(echo "$REQS" | sha256sum | cut -c1-16)
START=$SECONDS

step() { echo "[tfx-env] $* (+$((SECONDS - START))s)"; }
fail() {  # fail MESSAGE [LOG]: the message, and the end of LOG, on stderr; exit 1
  echo "[tfx-env] FAILED: $1" >&2
  if [ -n "${2:-}" ] && [ -f "$2" ]; then tail -n 15 "$2" | sed 's/^/[tfx-env]   /' >&2; fi
  exit 1
}
# /opt/tfx-set.txt: the venv's packages as built (pip freeze), the constraints run_in_env.sh installs the
# package with, so that installing it never replaces one of TFX's packages.
ready() { [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$WANT" ] && [ -f "$ROOT/opt/tfx-set.txt" ]; }

if ready; then echo "[tfx-env] ready: $ROOT"; exit 0; fi
[ "$(id -u)" = 0 ] || fail "building the TFX root needs root (debootstrap, chroot); run: sudo $0"
for tool in chroot flock mount; do command -v "$tool" >/dev/null || fail "$tool is not installed"; done
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
if ! flock -n 9; then
  step "another build of $ROOT is running; waiting for it"
  flock 9
fi
if ready; then echo "[tfx-env] ready: $ROOT (built by the other run)"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
  step "installing debootstrap with apt-get"
  { apt-get install -y -q debootstrap || { apt-get update -q && apt-get install -y -q debootstrap; }; } \
    > "$ROOT.debootstrap-install.log" 2>&1 \
    || fail "debootstrap is not installed and apt-get could not install it" "$ROOT.debootstrap-install.log"
fi

# The host's Debian mirror (deb822 "URIs:" or one-line "deb" entries), not its security mirror.
MIRROR=${TFREC_TOWERS_DEBIAN_MIRROR:-$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list \
    /etc/apt/sources.list.d/*.sources 2>/dev/null | grep -E '^[[:space:]]*(URIs:|deb )' \
    | grep -oE 'https?://[^ ]*/debian/?([[:space:]]|$)' | head -n 1 | tr -d '[:space:]' || true)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}

# Nothing may be mounted inside the root while it is wiped (a bind-mounted checkout would be deleted).
mounted_inside() { awk -v r="$ROOT/" 'index($5 "/", r) == 1 {print $5}' /proc/self/mountinfo; }

PROC_MOUNTED=
cleanup() { if [ -n "$PROC_MOUNTED" ]; then umount "$ROOT/proc" 2>/dev/null || umount -l "$ROOT/proc" || true; fi; }
trap cleanup EXIT

if [ ! -f "$STAGE" ] && [ ! -f "$MARK" ]; then  # no finished debootstrap here: start over
  if [ -e "$ROOT" ]; then
    busy=$(mounted_inside)
    [ -z "$busy" ] || fail "cannot wipe the unfinished root $ROOT: still mounted there: $busy"
    step "removing the unfinished root $ROOT"
    rm -rf --one-file-system "$ROOT"
  fi
  script=trixie
  [ -e "/usr/share/debootstrap/scripts/trixie" ] || script=/usr/share/debootstrap/scripts/sid
  step "debootstrap trixie from $MIRROR into $ROOT (about a minute; log: $ROOT.debootstrap.log)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
      trixie "$ROOT" "$MIRROR" $([ "$script" = trixie ] || echo "$script") > "$ROOT.debootstrap.log" 2>&1 \
    || fail "debootstrap trixie from $MIRROR" "$ROOT.debootstrap.log"
  touch "$STAGE"
fi

host_files() {  # DNS, the host's CA bundle (it may hold a proxy's CA) and pip.conf without find-links
  cp -L --remove-destination /etc/resolv.conf "$ROOT/etc/resolv.conf"
  cp -L --remove-destination /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
  if [ -f /etc/pip.conf ]; then grep -viE '^[[:space:]]*find[-_]links' /etc/pip.conf > "$ROOT/etc/pip.conf"; fi
}
host_files
if ! mountpoint -q "$ROOT/proc"; then mount -t proc proc "$ROOT/proc"; PROC_MOUNTED=1; fi

# Commands in the root get a clean environment: the host's PIP_FIND_LINKS and the like name host paths.
PASS=()
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY PIP_INDEX_URL PIP_EXTRA_INDEX_URL \
         PIP_TRUSTED_HOST PIP_DEFAULT_TIMEOUT; do
  if [ -n "${!v:-}" ]; then PASS+=("$v=${!v}"); fi
done
in_root() {
  chroot "$ROOT" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
    LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1 "${PASS[@]}" /bin/sh -c "$1"
}

step "apt-get install gcc g++ python3-dev in the root (pyfarmhash builds from source; log: $ROOT.apt.log)"
in_root "apt-get update -q && apt-get install -y -q --no-install-recommends gcc g++ python3-dev && apt-get clean" \
  > "$ROOT.apt.log" 2>&1 || fail "apt-get install gcc g++ python3-dev in the root" "$ROOT.apt.log"
host_files  # the ca-certificates trigger may have regenerated the bundle without the host's CAs

step "venv /opt/venv with $REQS (several minutes, about 3.5 GB; log: $ROOT.pip.log)"
in_root "set -e; [ -x /opt/venv/bin/python ] || python3 -m venv /opt/venv
         /opt/venv/bin/pip install --upgrade pip
         /opt/venv/bin/pip install $REQS
         /opt/venv/bin/pip uninstall -y scann
         /opt/venv/bin/pip freeze --exclude tfrec_towers > /opt/tfx-set.txt" > "$ROOT.pip.log" 2>&1 \
  || fail "pip install in the root" "$ROOT.pip.log"

step "checking imports in the root"
in_root "TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL=2 /opt/venv/bin/python -c '
import tensorflow as tf, tf_keras, tfx, tensorflow_recommenders as tfrs, tensorflow_text, yaml, pandas, matplotlib
from tfx import v1
from tfx.orchestration.local.local_dag_runner import LocalDagRunner
print(\"tfx\", tfx.__version__, \"tensorflow\", tf.__version__, \"tfrs\", tfrs.__version__)'" \
  > "$ROOT.check.log" 2>&1 || fail "imports in the root" "$ROOT.check.log"
step "$(tail -n 1 "$ROOT.check.log")"

echo "$WANT" > "$MARK"
step "ready: $ROOT ($(du -sh --one-file-system "$ROOT" | cut -f1))"
