"""import drmpy freezes the objects of its imports; the lazy formulaic import at the first
fit pauses the collector only (the user's objects exist by then)."""

import gc
import subprocess
import sys

from drmpy._startup import long_lived_imports


def test_freeze_only_when_asked():
    before = gc.get_freeze_count()
    with long_lived_imports(freeze=False):
        assert not gc.isenabled()
        junk = [object() for _ in range(10)]  # noqa: F841
    assert gc.get_freeze_count() == before and gc.isenabled()


def test_first_fit_leaves_the_users_objects_collectable():
    code = (
        "import gc, sys\n"
        "import drmpy as drm\n"
        "assert 'formulaic' not in sys.modules\n"
        "frozen = gc.get_freeze_count()\n"
        "user = [[] for _ in range(1000)]\n"
        "drm.fit(drm.Formula('yi ~ 1 + meta_V(V=vi)'), drm.datasets.restoration())\n"
        "assert 'formulaic' in sys.modules\n"
        "assert gc.get_freeze_count() <= frozen, (frozen, gc.get_freeze_count())  # nothing newly frozen\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
