#!/usr/bin/env bash
# Report every complete target of the v2 2D track into benchmarks/results/v2/transfer2d-v2/interim/
# (issue 13): export the finished runs, score the complete targets, run the pre-registered rule
# on them, compare with the legacy realisation and rewrite the generated tables of both READMEs.
#   scripts/interim_report.sh            # the targets that progress.json lists as complete
#   scripts/interim_report.sh a,b        # these targets (each must be complete)
# Scores are cached in the benchmark's work folder, so a target already scored costs nothing.
# The prose around the tables quotes their figures: reread it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1
CCFV=${CCFV:-$PWD/.venv/bin/ccfv}
PYTHON=${PYTHON:-$PWD/.venv/bin/python}
CFG=benchmarks/transfer2d-v2.yaml
R=benchmarks/results/v2/transfer2d-v2
TMP=${TMPDIR:-/tmp}/ccfv-interim-$$

"$PYTHON" scripts/export_bench_results.py --config "$CFG"
targets=$("$PYTHON" - "$R/progress.json" "${1:-}" <<'PY'
import json
import sys

progress = json.load(open(sys.argv[1]))
complete = [t for t, p in progress.items() if p["done"] == p["expected"] > 0]
asked = [t for t in sys.argv[2].split(",") if t] or complete
for t in asked:
    if t not in complete:
        p = progress.get(t)
        state = f"{p['done']} of {p['expected']} runs" if p else "not a target of the config"
        sys.exit(f"interim_report.sh: {t}: {state} in {sys.argv[1]}; give complete targets "
                 f"({', '.join(complete) or 'none yet'})")
print(",".join(asked))
PY
)
if [ -z "$targets" ]; then
  echo "interim_report.sh: no target of $R/progress.json is complete yet; nothing to report" >&2
  exit 1
fi
echo "reporting: $targets"
"$CCFV" bench --config "$CFG" --threads 1 --quiet --targets "$targets" --out "$TMP"
"$PYTHON" benchmarks/apply_default_rule.py --summary "$TMP/summary.json" --out "$TMP/default-rule"
rm -rf "$R/interim.new"
mkdir -p "$R/interim.new"
cp "$TMP"/tables.md "$TMP"/summary.json "$TMP"/config.yaml "$TMP"/*.png "$R/interim.new/"
cp -r "$TMP/default-rule" "$R/interim.new/"
rm -rf "$R/interim"
mv "$R/interim.new" "$R/interim"
"$PYTHON" benchmarks/score_stability.py "$R/interim-2026-12-02/summary.json" \
  "$R/interim/summary.json" --out "$R/interim/realisations.md"
"$PYTHON" benchmarks/headline_table.py update README.md benchmarks/results/v2/README.md
rm -rf "$TMP"
echo "interim report of $targets in $R/interim; reread the prose of README.md and $R/../README.md"
