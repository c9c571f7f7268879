"""The ``--jobs N`` fork server's preload under ``bench_scale.py timeline``: the tree's own preload
modules (``TILPHENO_BENCH_PRELOAD``, comma-separated, as the traced run's ``pool_context`` set them)
imported between two timeline events, so the timeline shows when the server could fork its first
worker and how much CPU its imports took. A module that cannot be imported is skipped, as
``multiprocessing.forkserver`` skips it."""
import importlib
import os

import bench_scale

bench_scale._event("fork server preload start")
for name in filter(None, os.environ.get(bench_scale.PRELOAD_MODULES, "").split(",")):
    try:
        importlib.import_module(name)
    except ImportError:
        pass
bench_scale._event("fork server preload end")
