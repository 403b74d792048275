# session 9, call 4 (c4_same_call_titan/): the acceptance measurement with this session's changes
# (weighted_swiglu's custom VJP; train.py's loop and train_step.py with one step queued) in this
# tree; HEAD f366112 (.peers/base) and this tree + the params' bf16 copy in the train state
# (.peers/cc: session 7's ce9714a, cast from the selected new masters) in the same call;
# torchtitan; the tiny recipe's bf16 loss in all three trees.
set -u
BASE=".peers/base .peers/cc" OUT=$OUT/c4 bash benchmarks/proxies_vs_titan.sh
