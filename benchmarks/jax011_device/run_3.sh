# the third device command (same machine, JAX 0.11.2): the not-slow suite in ONE process with
# tests/conftest.py's per-module release of compiled programs switched off (the fixture returns
# after its yield) and a cold persistent cache: the setting in which jaxlib 0.10.2 aborted
export JAX_PLATFORMS=cpu PYTHONPATH=$PWD/src
sed -i 's/^if "xla_cpu_use_fusion_emitters" not in/if 0 and "xla_cpu_use_fusion_emitters" not in/; s/^    jax.clear_caches()$/    return/' tests/conftest.py; grep -n "^    return$\|^if 0" tests/conftest.py
SECONDS=0; timeout 330 python3 -m pytest -q -n 0 -m "not slow" -o addopts="" -p no:benchmark -p no:cacheprovider > $OUT/one_process.txt 2>&1; echo "rc=$? after ${SECONDS}s" >> $OUT/one_process.txt; tail -4 $OUT/one_process.txt; grep -c PASSED $OUT/one_process.txt; grep -o "\[ *[0-9]*%\]" $OUT/one_process.txt | tail -1
