# session 8, call 1 (c1_scan_layers/): HEAD 653deaf (.peers/base, session 7's code) and this tree
# (model.scan_layers=False in the proxies), both proxies, torchtitan, and the tiny recipe's bf16
# loss in both trees (the tiny recipe's code path is the same in both: scan_layers defaults to True).
BASE=.peers/base bash benchmarks/proxies_vs_titan.sh
