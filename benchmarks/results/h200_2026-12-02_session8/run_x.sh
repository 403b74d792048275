# session 8, call 2 (c2_scan_layers_profiles/): profiles of this tree (model.scan_layers=False)
TOP=40 OUT=/tmp/prof bash benchmarks/profile_proxies.sh
