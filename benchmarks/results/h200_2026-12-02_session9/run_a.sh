# session 9, call 1 (c1_tiles_balanced/): the Mixtral shapes' tiles tuned on the H200 on near-equal
# groups (Dirichlet alpha=100, as the proxy's balanced routing gives; fc2 had only H100 entries),
# then the Mixtral proxy with the committed tiles (.peers/base = HEAD f366112) and with the new
# ones in the same call, then a profile with the new tiles (150 longest instructions).
set -u
TUNE_SHAPES="32768 8 14336 4096;32768 8 4096 28672" TUNE_ALPHA=100 TUNE_TIMEOUT=150 OUT=$OUT/c1 \
  bash benchmarks/grouped_gemm_device.sh tune
cp $OUT/c1/tiles.json kernels/grouped_gemm/tiles.json
TINY=0 TITAN=none PROXIES=mixtral_width BASE=.peers/base OUT=$OUT/c1 bash benchmarks/proxies_vs_titan.sh
PROXIES=mixtral_width TOP=150 OUT=$OUT/c1 bash benchmarks/profile_proxies.sh
