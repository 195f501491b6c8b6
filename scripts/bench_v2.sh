#!/usr/bin/env bash
# Protocol v2 of the transfer benchmark in the background, two single-thread processes sharing
# one work folder (each stage is claimed by a lock file, so they split the work):
#   process a: the convergence study (benchmarks/results/v2/convergence/), then the benchmark;
#   process b: the benchmark (starts once process a has prepared the tasks).
# Then the 3D track the same way. Resumable: run it again after an interruption.
#   nohup scripts/bench_v2.sh > /dev/null 2>&1 &
# Progress: tail -f .ccfv_bench/transfer2d-v2/run-a.log .ccfv_bench/transfer2d-v2/run-b.log
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
CCFV=${CCFV:-/work/main/.venv/bin/ccfv}
for track in transfer2d-v2 chaos3d-v2; do
  work=.ccfv_bench/$track
  mkdir -p "$work"
  : > "$work/run-a.log"
  (
    if [ "$track" = transfer2d-v2 ]; then
      "$CCFV" bench --config benchmarks/$track.yaml --convergence --threads 1 --quiet \
        --work "$work" --out benchmarks/results/v2/convergence
    fi
    "$CCFV" bench --config benchmarks/$track.yaml --threads 1 --quiet --work "$work" \
      --out bench-out/$track
  ) >> "$work/run-a.log" 2>&1 &
  a=$!
  # process b starts once the tasks are prepared (a writes them first)
  until grep -q "^pre-trained \|fine-tuned Dice\|^convergence \|Error" "$work/run-a.log" \
      || ! kill -0 $a 2>/dev/null; do sleep 10; done
  "$CCFV" bench --config benchmarks/$track.yaml --threads 1 --quiet --work "$work" \
    --out bench-out/$track > "$work/run-b.log" 2>&1 &
  b=$!
  wait $a $b
done
