# the second device command (same machine, JAX 0.11.2): the suite with tests/conftest.py's
# fusion-emitter flag left out (what the jaxlib version check in conftest now does)
export JAX_PLATFORMS=cpu PYTHONPATH=$PWD/src
sed -i 's/^if "xla_cpu_use_fusion_emitters" not in/if 0 and "xla_cpu_use_fusion_emitters" not in/' tests/conftest.py; grep -n "^if 0" tests/conftest.py
python3 -c "import jax,jaxlib;print(jax.__version__,jaxlib.__version__)"
timeout 200 python3 -m pytest -q -m "not slow" -n 14 --dist loadfile -o addopts="" -p no:benchmark > $OUT/notslow.txt 2>&1; echo rc=$? >> $OUT/notslow.txt
tail -25 $OUT/notslow.txt
timeout 190 python3 -m pytest -q -m slow -n 14 --dist loadfile -o addopts="" -p no:benchmark > $OUT/slow.txt 2>&1; echo rc=$? >> $OUT/slow.txt
tail -25 $OUT/slow.txt
