#!/usr/bin/env bash
# Build (once) the environment that holds TFX: a Debian trixie root, because tfx 1.21 needs glibc
# 2.39 (ml-metadata's only wheel) and Debian 12 has 2.36. Cached outside the clone, at
# $TFREC_TOWERS_TFX_ROOT (default ~/.cache/tfrec_towers/tfx-trixie), and rebuilt when its marker is
# missing or the requirement list changed. Needs root (debootstrap, chroot) and the Debian mirror and
# PyPI. Steps as verified in ../shared/STACK.md. Prints progress; exits non-zero naming the failed step.
set -euo pipefail
ROOT=${TFREC_TOWERS_TFX_ROOT:-$HOME/.cache/tfrec_towers/tfx-trixie}
REQS="tfx==1.21.0 tf-keras==2.21.0 tensorflow-recommenders==0.7.7 tensorflow-text==2.21.1 tensorboard pyyaml pandas matplotlib"
# (tensorboard: training writes TensorBoard logs; TF 2.21 no longer pulls it in.)
# scann is left out on purpose: its 1.4.2 ops do not load on TF 2.21, and TFRS then fails to import.
MARK="$ROOT/.tfrec_towers_env_ok"
WANT=$(echo "$REQS" | sha256sum | cut -c1-16)

step() { echo "[tfx-env] $*"; }
fail() { echo "[tfx-env] FAILED: $*" >&2; exit 1; }

if [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$WANT" ]; then
  step "ready: $ROOT"; exit 0
fi
[ "$(id -u)" = 0 ] || fail "building the TFX root needs root (debootstrap, chroot)"
mkdir -p "$(dirname "$ROOT")"
exec 9>"$ROOT.lock"
flock 9  # one build at a time; a second caller waits, then finds the marker
if [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$WANT" ]; then step "ready: $ROOT"; exit 0; fi

if ! command -v debootstrap >/dev/null; then
  step "installing debootstrap"
  apt-get install -y -q debootstrap >/dev/null || fail "apt-get install debootstrap"
fi
MIRROR=$(grep -rhE '^(URIs:|deb) ' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
         | grep -oE 'https?://[^ ]*/debian/?( |$)' | grep -v security | head -n 1 | tr -d ' ' || true)
MIRROR=${MIRROR:-http://deb.debian.org/debian}

cleanup() { umount "$ROOT/proc" 2>/dev/null || true; }
trap cleanup EXIT
if [ ! -x "$ROOT/usr/bin/python3" ]; then
  rm -rf "$ROOT"
  step "debootstrap trixie from $MIRROR into $ROOT (about a minute)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates trixie "$ROOT" "$MIRROR" \
    > "$ROOT.debootstrap.log" 2>&1 || fail "debootstrap (log: $ROOT.debootstrap.log)"
fi
cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$ROOT/etc/ssl/certs/ca-certificates.crt"
if [ -f /etc/pip.conf ]; then grep -v '^find-links' /etc/pip.conf > "$ROOT/etc/pip.conf"; fi
mountpoint -q "$ROOT/proc" || mount -t proc proc "$ROOT/proc"
step "apt-get gcc g++ python3-dev (pyfarmhash builds from source)"
chroot "$ROOT" /bin/sh -c "apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q gcc g++ python3-dev" \
  > "$ROOT.apt.log" 2>&1 || fail "apt-get in the root (log: $ROOT.apt.log)"
step "venv /opt/venv + $REQS (a few minutes, about 3.3 GB)"
chroot "$ROOT" /bin/sh -c "python3 -m venv /opt/venv && /opt/venv/bin/pip install -q --upgrade pip && /opt/venv/bin/pip install -q $REQS" \
  > "$ROOT.pip.log" 2>&1 || fail "pip install in the root (log: $ROOT.pip.log)"
step "checking imports"
chroot "$ROOT" /usr/bin/env TF_USE_LEGACY_KERAS=1 /opt/venv/bin/python -c \
  "import tfx, tensorflow_recommenders, tensorflow_text; from tfx.orchestration.local.local_dag_runner import LocalDagRunner; print('tfx', tfx.__version__)" \
  || fail "imports in the root"
echo "$WANT" > "$MARK"
step "ready: $ROOT ($(du -sh "$ROOT" | cut -f1))"
