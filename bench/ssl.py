"""``python bench/ssl.py --labels 1000 --budget 900 --out FILE.json``: the semi-supervised benchmark.

The benchmark itself is ``semi_supervised.py``. This file only launches it: a file named ssl.py
in the folder of a running script hides the standard library's ``ssl`` module from everything
that script imports (http.client, asyncio, urllib), so when it is imported rather than run, it
loads the standard library's module in its own place.
"""

if __name__ == "__main__":
    from semi_supervised import main

    main()
else:
    import importlib.util
    import os
    import sys
    import sysconfig

    _spec = importlib.util.spec_from_file_location(__name__, os.path.join(sysconfig.get_paths()["stdlib"], "ssl.py"))
    assert _spec is not None and _spec.loader is not None
    _module = importlib.util.module_from_spec(_spec)
    sys.modules[__name__] = _module
    _spec.loader.exec_module(_module)
