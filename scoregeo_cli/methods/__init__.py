"""Interpolation methods: each turns two endpoints into a path, and may continue it.

Every method is a class built from ``conf/method/<name>.yaml`` (whose package header files it
under ``methods.<name>``); an experiment selects the methods it compares with
``method: [geodesic, lerp, ...]``. ``run_methods`` is the one loop over them.
"""

from scoregeo_cli.methods.base import Method, MethodPath, Plan, build_methods, check_methods, run_methods

__all__ = ["Method", "MethodPath", "Plan", "build_methods", "check_methods", "run_methods"]
