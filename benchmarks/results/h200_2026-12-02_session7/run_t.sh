# session 7, call 3: the acceptance measurement, same call: HEAD a60c294 (.peers/base, session 6's
# code) and this tree (bf16 logits + the compute copy in the train state), both proxies, torchtitan,
# and the tiny recipe's bf16 loss in both trees.
BASE=.peers/base bash benchmarks/proxies_vs_titan.sh
