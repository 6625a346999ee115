#!/usr/bin/env bash
# One call on a lent GPU: install, run the test suite on CUDA, measure host time, sweep tiles, benchmark.
#   bash bench/gpu_session.sh [tests|host|sweep|quick|bench ...]   (default: tests host quick)
# TEST_PATHS and BENCH_ARGS (e.g. "--loss cross_entropy") narrow the tests and the benchmark.
# Logs and results go to $OUT (the device tool brings them back) and bench/results/.
set -uo pipefail
OUT=${OUT:-/tmp/fusedloss-out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv
python3 -m fusedloss info
steps=${*:-tests host quick}
for step in $steps; do
  echo "=== $step ($(date +%T))"
  case $step in
    tests) python3 -m pytest -q -n 8 --maxfail=30 --timeout 900 ${TEST_PATHS:-tests} 2>&1 | tee "$OUT/tests.log" | tail -25 ;;
    host)  python3 -m fusedloss bench --host --out "$OUT/host.json" 2>&1 | tee "$OUT/host.log" ;;
    sweep) python3 bench/sweep_softmax_rows.py 2>&1 | tee "$OUT/sweep.log" ;;
    quick) python3 -m fusedloss bench --quick --no-progress --out "$OUT/quick.json" ${BENCH_ARGS:-} 2>&1 | tail -40 ;;
    bench) python3 -m fusedloss bench --no-progress --out "$OUT/bench.json" ${BENCH_ARGS:-} 2>&1 | tail -60 ;;
  esac
done
echo "=== done ($(date +%T))"
