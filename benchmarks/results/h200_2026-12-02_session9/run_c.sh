# session 9, call 3 (c3_compute_copy_swiglu/): Mixtral step times in one call for
#   base: HEAD f366112;
#   cc:   the params' bf16 copy in the train state again (session 7's ce9714a on HEAD), now cast
#         from the selected new masters (no read of the old copy), so the update's pass can write it;
#   this tree: HEAD + weighted_swiglu's custom VJP (dh and dprobs from one [R, F, 2] graph) + the
#         lag probe in train_step.py;
# then profiles of cc and of this tree.
set -u
TINY=0 TITAN=none PROXIES=mixtral_width BASE=".peers/base .peers/cc" OUT=$OUT/c3 bash benchmarks/proxies_vs_titan.sh
grep -h PROBE /tmp/pvt_logs/*.log | tee $OUT/c3/probe.txt
PROXIES=mixtral_width TOP=60 OUT=$OUT/c3/cc bash .peers/cc/benchmarks/profile_proxies.sh
PROXIES=mixtral_width TOP=60 OUT=$OUT/c3/sw bash benchmarks/profile_proxies.sh
