#!/bin/bash
# Session 40, call b (an H100 came for the H200 call): this session's changes on a GPU, then both
# whole-step proxies beside torchtitan on this tree (no before tree), as a no-regression check.
#  c1_functional/: tiny recipe through train.py in bf16 with train.calculate_per_token_loss on eod-masked
#    tokens and the two new Megatron metrics (logging.log_params_norm, logging.log_num_zeros_in_grad).
#  a2_same_call_titan/: BASE= bash benchmarks/proxies_vs_titan.sh (carry [".whl", ".peers"]).
set -u -o pipefail
source benchmarks/device_env.sh
O=$OUT/c1_functional; mkdir -p $O
(cd /tmp/pp && timeout 200 python3 train.py --config configs/tiny_moe.py --workdir /tmp/s40w --config.model.dtype=bfloat16 \
  --config.train.calculate_per_token_loss=True --config.data.eod_mask_loss=True --config.data.eod=5 \
  --config.logging.log_params_norm=True --config.logging.log_num_zeros_in_grad=True --config.train.train_iters=20 \
  --config.train.log_interval=5) 2>&1 | grep -vE '^WARNING|bfc_allocator' > $O/log.txt; echo "rc=$?" | tee -a $O/log.txt
grep -E "^step|Error" $O/log.txt | cut -c1-220
BASE= OUT=$OUT/a2_same_call_titan bash benchmarks/proxies_vs_titan.sh
tail -n 8 $OUT/a2_same_call_titan/log.txt
