#!/usr/bin/env bash
# One session of the coffee `cpu` experiment on a fresh machine, stopped in time to save it:
#   bash experiments/coffee-cpu/session.sh SESSION STOP_AT      e.g.  bash experiments/coffee-cpu/session.sh 2 09:20
# SESSION numbers the machine (its corpus slice gets new D0 seeds); STOP_AT (HH:MM, UTC, today) is when
# the run is stopped and its small part saved back into this checkout (commit it afterwards); a time already
# past today is read as tomorrow's.
# Runs in the background-friendly way: niced, logs under $EXP. Safe to rerun (everything resumes).
set -euo pipefail
SESSION=${1:?session number}
STOP_AT=${2:?stop time HH:MM (UTC)}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
EXP=${EXP:-/root/wmpo-exp}
SAVED=$REPO/experiments/coffee-cpu/run
RUN=$EXP/coffee
CORPUS=$EXP/corpus
# HH:MM already past today means tomorrow (a session that starts before midnight and ends after it)
stop_epoch=$(date -d "$STOP_AT" +%s) || { echo "session.sh: cannot read stop time '$STOP_AT'" >&2; exit 2; }
[ "$stop_epoch" -gt "$(date +%s)" ] || stop_epoch=$(date -d "tomorrow $STOP_AT" +%s)
left() { echo $(( stop_epoch - $(date +%s) )); }

mkdir -p "$EXP"
if [ ! -x "$EXP/src/.venv/bin/wmpo" ]; then
  git -C "$REPO" worktree prune
  git -C "$REPO" worktree add "$EXP/src" HEAD --detach
  (cd "$EXP/src" && make setup) > "$EXP/setup.log" 2>&1
fi
# shellcheck disable=SC1091
source "$EXP/src/.venv/bin/activate"
export MUJOCO_GL=egl WMPO_NO_PROGRESS=1
[ -d "$RUN" ] || python "$REPO/experiments/persist.py" restore "$SAVED" "$RUN"

# while the world model still pretrains: a fresh corpus slice (new D0 seeds on every machine), for at
# most half of the time left
if [ ! -f "$RUN/stages/wm_pretrain.json" ]; then
  budget=$(( $(left) / 2 ))
  timeout "$budget" nice -n 5 wmpo corpus --out "$CORPUS" --seed-base $((3000000 + 100000 * SESSION)) \
    --episodes-per-task 75 --workers 2 >> "$EXP/corpus.log" 2>&1 || true
fi
timeout "$(left)" nice -n 5 wmpo run --task coffee --preset cpu --baselines --corpus "$CORPUS" --corpus-as-is \
  --upgrade-config --out "$RUN" >> "$EXP/coffee.log" 2>&1 || echo "run stopped (exit $?) at $(date -u +%H:%M)"
python "$REPO/experiments/persist.py" save "$RUN" "$SAVED"
echo "saved into $SAVED: commit it"
