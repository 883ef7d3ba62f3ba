#!/usr/bin/env bash
# Run a command in the TFX root (built by build_env.sh) with this checkout at /repo and WORKDIR
# (default: the current directory) bind-mounted at the same path inside, so paths given to the
# command mean the same thing on both sides. The package runs from /repo via PYTHONPATH: installing it
# there would pull TF 2.20 over TFX's 2.21.
#   pipelines/tfx/run_in_env.sh [--workdir DIR] python pipelines/tfx/pipeline.py ...
set -euo pipefail
ROOT=${TFREC_TOWERS_TFX_ROOT:-$HOME/.cache/tfrec_towers/tfx-trixie}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORKDIR=$PWD
if [ "${1:-}" = "--workdir" ]; then WORKDIR=$(cd "$2" && pwd); shift 2; fi
[ -f "$ROOT/.tfrec_towers_env_ok" ] || { echo "no TFX environment at $ROOT: run pipelines/tfx/build_env.sh" >&2; exit 3; }
mounts=()
cleanup() { for ((i=${#mounts[@]}-1; i>=0; i--)); do umount "${mounts[$i]}" 2>/dev/null || umount -l "${mounts[$i]}" || true; done; }
trap cleanup EXIT
bind() { mkdir -p "$ROOT$2"; mount --bind "$1" "$ROOT$2"; mounts+=("$ROOT$2"); }
mount -t proc proc "$ROOT/proc" && mounts+=("$ROOT/proc")
bind "$REPO" /repo
[ "$WORKDIR" = "$REPO" ] || bind "$WORKDIR" "$WORKDIR"
cmd=("$@"); [ "${cmd[0]}" = python ] && cmd[0]=/opt/venv/bin/python
chroot "$ROOT" /usr/bin/env -i PATH=/opt/venv/bin:/usr/bin:/bin HOME=/tmp TF_USE_LEGACY_KERAS=1 \
  TF_CPP_MIN_LOG_LEVEL=2 PYTHONPATH=/repo CUDA_VISIBLE_DEVICES= /bin/sh -c 'cd /repo && exec "$@"' sh "${cmd[@]}"
