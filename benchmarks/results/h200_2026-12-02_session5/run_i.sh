# session 5, call 5: the acceptance measurement: both proxies, then torchtitan, same call
set -u
source benchmarks/device_env.sh
for p in qwen3_30b_width mixtral_width; do
  (cd /tmp/pp && timeout 120 python3 benchmarks/train_step.py --config configs/proxies/$p.py --steps 15 --warmup 3 --tag $p \
     --out $OUT/ours.jsonl) > $OUT/$p.log 2>&1; grep -A1 "^tag" $OUT/$p.log | tail -1; tail -1 $OUT/$p.log
done
TITAN_BUDGET_S=300 TITAN_HARD_S=310 OUT=$OUT bash .peers/torchtitan/run_titan.sh > $OUT/titan_log.txt 2>&1
tail -8 $OUT/titan_results.txt
