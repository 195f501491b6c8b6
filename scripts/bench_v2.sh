#!/usr/bin/env bash
# Protocol v2 of the transfer benchmark in the background, two single-thread processes sharing
# one work folder (each stage is claimed by a lock file, so they split the work). Per track:
#   1. both processes run the convergence study (benchmarks/results/v2/convergence for the 2D
#      track, benchmarks/results/v2/convergence-3d for CHAOS);
#   2. the budget rule of that study is checked against the config's finetune_steps: where they
#      disagree the script stops and says what to set (fine-tuning with a budget the rule
#      contradicts would only make runs to throw away);
#   3. both processes run the benchmark (results in bench-out/<track>).
# Then the 3D track the same way. Resumable: run it again after an interruption.
#   nohup scripts/bench_v2.sh > /dev/null 2>&1 &
# Progress: tail -f .ccfv_bench/<track>/run-a.log .ccfv_bench/<track>/run-b.log
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
CCFV=${CCFV:-$PWD/.venv/bin/ccfv}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
for track in transfer2d-v2 chaos3d-v2; do
  work=.ccfv_bench/$track
  cfg=benchmarks/$track.yaml
  study=benchmarks/results/v2/convergence
  [ "$track" = chaos3d-v2 ] && study=benchmarks/results/v2/convergence-3d
  mkdir -p "$work"
  for p in a b; do
    (
      [ $p = b ] && sleep 60   # a prepares the tasks first
      "$CCFV" bench --config $cfg --convergence --threads 1 --quiet --work "$work" --out $study
    ) > "$work/convergence-$p.log" 2>&1 &
  done
  wait
  "$PYTHON" - "$cfg" "$study/convergence.json" <<'PY' || exit 1
import json
import sys

from ccfv.bench.config import load_config
from ccfv.bench.run import finetune_settings

config = load_config(sys.argv[1])
rules = json.load(open(sys.argv[2])).get("budget_rule", {})
bad = [
    f"finetune_steps: {{{t}: {r['steps']}}} (the config gives {finetune_settings(config, t)['steps']})"
    for t, r in rules.items()
    if "steps" in r and r["steps"] != finetune_settings(config, t)["steps"]
]
if bad:
    sys.exit(f"{sys.argv[1]}: the budget rule of {sys.argv[2]} asks for " + "; ".join(bad)
             + ": set it in the config and run scripts/bench_v2.sh again")
PY
  for p in a b; do
    (
      [ $p = b ] && sleep 60
      "$CCFV" bench --config $cfg --threads 1 --quiet --work "$work" --out bench-out/$track
    ) > "$work/run-$p.log" 2>&1 &
  done
  wait
done
