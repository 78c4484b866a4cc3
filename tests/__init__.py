"""The test suite as a package of its own, so that `tests.conftest` names this folder's module even where another
top-level `tests` package is installed (a package wins over a namespace package wherever it sits on sys.path)."""
