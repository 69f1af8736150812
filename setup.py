"""The C fast paths (everything else about the package is in pyproject.toml).

Declared here rather than in pyproject.toml: setuptools still calls ``ext-modules`` there
experimental, and the build takes the newest setuptools. Both are optional: where they
cannot be built (no C compiler), the pure Python paths give the same results, more slowly,
and tests/test_fastpath.py and tests/test_native.py fail unless PRIMELEDGER_PURE_PYTHON=1
says that is intended. Why C, and how each stays held to its Python path: README,
"Decisions where the issues were silent".
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"]

setup(
    ext_modules=[
        # The writer's accepted transfers (ledger/processing.py).
        Extension("ledger._fastpath", ["ledger/_fastpath.c"], extra_compile_args=FLAGS,
                  optional=True),
        # The store's COPY framing and batch commit without the GIL (ledger/store.py).
        Extension("ledger._store", ["ledger/_store.c"], extra_compile_args=FLAGS, optional=True),
        # The read side's decoder (projections/decode.py).
        Extension("projections._native", ["projections/_native.c"], extra_compile_args=FLAGS,
                  optional=True),
    ]
)  # fmt: skip
