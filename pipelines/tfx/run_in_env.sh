#!/usr/bin/env bash
# Run a command in the TFX root built by build_env.sh:
#
#   sudo pipelines/tfx/run_in_env.sh [--workdir DIR] COMMAND [ARGS...]
#   sudo pipelines/tfx/run_in_env.sh --workdir /data python pipelines/tfx/pipeline.py --data-root /data/logs ...
#
# First this checkout's package is installed into the root's venv with pip, as into any TFX environment:
# non-editable, from a copy of its sources, its requirements resolved against the TFX set that
# build_env.sh recorded (/opt/tfx-set.txt, used as pip constraints, so an install that would replace any
# of TFX's packages fails instead), then `pip check`. A lock keeps another checkout from replacing it
# while the command runs (runs from several checkouts take turns).
# Inside: this checkout at /repo (for pipelines/tfx/*; not on PYTHONPATH); DIR (default
# $TFREC_TOWERS_TFX_WORKDIR, if set) bind-mounted at the same path, so paths under it mean the same on
# both sides; /proc; TF_USE_LEGACY_KERAS=1; `python`/`python3` is /opt/venv/bin/python. The command
# starts in /repo, or in the same directory as here when that is under the checkout or DIR.
# The mounts are made in a private mount namespace (unshare) where available, so the host never sees
# them and they go away with the command even if it is killed; they are also unmounted on exit (trap).
# Exits with the command's status; 3 when the environment is not built; 4 when pip cannot install the
# package into it without changing TFX's packages.
set -euo pipefail

ROOT=${TFREC_TOWERS_TFX_ROOT:-$HOME/.cache/tfrec_towers/tfx-trixie}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
HERE=$(pwd -P)
WORKDIR=${TFREC_TOWERS_TFX_WORKDIR:-}
if [ "${1:-}" = "--workdir" ]; then
  [ -n "${2:-}" ] || { echo "run_in_env.sh: --workdir needs a directory" >&2; exit 2; }
  WORKDIR=$2; shift 2
fi
[ $# -gt 0 ] || { echo "usage: run_in_env.sh [--workdir DIR] COMMAND [ARGS...]" >&2; exit 2; }
[ -f "$ROOT/.tfrec_towers_env_ok" ] && [ -f "$ROOT/opt/tfx-set.txt" ] \
  || { echo "run_in_env.sh: no TFX environment at $ROOT: run pipelines/tfx/build_env.sh" >&2; exit 3; }
[ "$(id -u)" = 0 ] || { echo "run_in_env.sh: needs root (mount, chroot)" >&2; exit 3; }
if [ -n "$WORKDIR" ]; then
  mkdir -p "$WORKDIR"
  WORKDIR=$(cd "$WORKDIR" && pwd -P)
  case "$WORKDIR" in  # would hide the root's own system directories
    /|/bin|/bin/*|/boot|/boot/*|/dev|/dev/*|/etc|/etc/*|/lib|/lib/*|/lib64|/lib64/*|/opt|/opt/*|/proc|/proc/*|\
    /sbin|/sbin/*|/sys|/sys/*|/usr|/usr/*|/var|/run|/repo|/repo/*)
      echo "run_in_env.sh: --workdir $WORKDIR would hide the TFX root's own files; use a data directory" >&2; exit 2;;
  esac
  case "$WORKDIR/" in "$ROOT"/*) echo "run_in_env.sh: --workdir must not be inside $ROOT" >&2; exit 2;; esac
fi

# Re-run this script in a private mount namespace (mounts invisible to the host, gone when it exits).
if [ -z "${_TFREC_TOWERS_TFX_NS:-}" ] && command -v unshare >/dev/null \
   && unshare --mount --propagation private true 2>/dev/null; then
  _TFREC_TOWERS_TFX_NS=1 TFREC_TOWERS_TFX_ROOT=$ROOT TFREC_TOWERS_TFX_WORKDIR=$WORKDIR \
    exec unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$@"
fi

mounts=()
cleanup() {
  local i
  for ((i = ${#mounts[@]} - 1; i >= 0; i--)); do
    umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" || true
  done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
bind() { mkdir -p "$ROOT$2"; mount --bind "$1" "$ROOT$2"; mounts+=("$ROOT$2"); }
mount -t proc proc "$ROOT/proc"; mounts+=("$ROOT/proc")
bind "$REPO" /repo
if [ -n "$WORKDIR" ] && [ "$WORKDIR" != "$REPO" ]; then bind "$WORKDIR" "$WORKDIR"; fi

inside=/repo
case "$HERE/" in
  "$REPO"/*) inside=/repo${HERE#"$REPO"};;
  *) if [ -n "$WORKDIR" ]; then case "$HERE/" in "$WORKDIR"/*) inside=$HERE;; esac; fi;;
esac
cmd=("$@")
case "${cmd[0]}" in python|python3) cmd[0]=/opt/venv/bin/python;; esac

# pip install this checkout (see the top), holding the lock until the command ends.
exec 8>"$ROOT.install.lock"
flock 8
src=$(mktemp -d "$ROOT/tmp/tfrec_towers-src.XXXXXX")
cp -r "$REPO/setup.py" "$REPO/README.md" "$REPO/tfrec_towers" "$src/"
echo "[tfx-env] pip install $REPO into /opt/venv (constraints: the TFX set in /opt/tfx-set.txt)" >&2
installed=0
chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 PIP_DISABLE_PIP_VERSION_CHECK=1 \
  /bin/sh -c 'pip install -q --no-build-isolation -c /opt/tfx-set.txt "$0" && pip check >/dev/null' "${src#"$ROOT"}" \
  8>&- >&2 || installed=$?
rm -rf "$src"
if [ "$installed" != 0 ]; then
  echo "run_in_env.sh: pip could not install tfrec_towers into the TFX environment without changing its packages" >&2
  exit 4
fi

# Not exec: the trap unmounts after the command ends, whatever its status.
status=0
chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/local/bin:/usr/bin:/bin HOME=/tmp LANG=C.UTF-8 \
  TF_USE_LEGACY_KERAS=1 TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}" CUDA_VISIBLE_DEVICES= \
  /bin/sh -c 'cd "$0" && exec "$@"' "$inside" "${cmd[@]}" 8>&- || status=$?
exit "$status"
