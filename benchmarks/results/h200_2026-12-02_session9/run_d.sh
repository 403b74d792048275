# session 9, call 4 (c4_same_call_titan/): the acceptance measurement with this session's changes
# (weighted_swiglu's custom VJP; train.py's loop and train_step.py with one step queued) in this
# tree, HEAD f366112 (.peers/base) in the same call, torchtitan, and the tiny recipe's bf16 loss in
# both trees; then, if time is left, Mixtral with this tree + the params' bf16 copy in the train
# state (.peers/cc: session 7's ce9714a, cast from the selected new masters) against this tree.
set -u
BASE=.peers/base OUT=$OUT/c4 bash benchmarks/proxies_vs_titan.sh
TINY=0 TITAN=none PROXIES=mixtral_width BASE=.peers/cc OUT=$OUT/c4cc bash benchmarks/proxies_vs_titan.sh
