# session 9, call 2 (c2_lag_probe/): how much of the step is host time between steps. After the
# timed steps (each fetching its metrics before the next is dispatched, as train.py's loop does),
# train_step.py (probe patch, not committed) runs as many steps with the next step dispatched before
# the previous step's metrics are read, and prints both medians.
set -u
TINY=0 TITAN=none OUT=$OUT/c2 bash benchmarks/proxies_vs_titan.sh
grep -h PROBE /tmp/pvt_logs/*.log | tee $OUT/c2/probe.txt
