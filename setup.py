"""Build hook for the one compiled part: the native CPU kernels (``feddst_core/native/feddst_kernels.c``).

Everything else is declared in pyproject.toml. The extension is optional: without a C compiler the
install still succeeds and ``feddst_core.native.available()`` reports why the torch fallback is used.
The C file is plain C11 + OpenMP (no Python or torch headers), loaded with ctypes.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "feddst_core.native._feddst_kernels",
            sources=["feddst_core/native/feddst_kernels.c"],
            extra_compile_args=["-O3", "-std=gnu11", "-fopenmp", "-Wno-psabi"],
            extra_link_args=["-fopenmp"],
            optional=True,
        )
    ]
)
