"""Which build of valqd runs: its hot modules compiled with mypyc, or pure Python.

A compiled install holds, beside each compiled module's .py, its extension module, and
`compiled.json`: the SHA-256 of each compiled module's source when it was built. Python
imports an extension module before the .py beside it, so after an edit of the .py the stale
compiled module would run instead (an editable install compiles in place). On import of
valqd, before any compiled module loads, this module compares every source with its
record. When all match, the compiled modules run. When any differs or its compiled module
is missing, every one of them runs from its .py (they call each other natively, so a
mixture is not safe), and valqd says so on stderr.

`VALQD_BUILD` in the environment of a running valqd: `pure` runs the .py files even when the
compiled modules are current; `compiled` refuses to import valqd unless they all are, so a
test run meant for the compiled build cannot test anything else; `auto` (the default)
takes them when they are current.

This module and valqd/__init__.py must never be compiled.
"""

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Sequence

PACKAGE_DIR = Path(__file__).resolve().parent
MANIFEST = PACKAGE_DIR / "compiled.json"
REBUILD = "VALQD_BUILD=compiled pip install [-e] ."


class Build(NamedTuple):
    name: str  # "compiled" or "pure"
    detail: str  # how many modules and with what, or why pure

    def describe(self) -> str:
        """`compiled (9 modules, mypyc 2.4.1)` or `pure (VALQD_BUILD=pure)`: what
        `valqd --version` says after the version."""
        return f"{self.name} ({self.detail})"


class SourceFirst(importlib.abc.MetaPathFinder):
    """Imports the listed modules from their .py files, passing over the compiled ones."""

    def __init__(self, sources: dict[str, Path]) -> None:
        self.sources = sources

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        source = self.sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def compiled_module_exists(name: str) -> bool:
    *package, stem = name.split(".")
    directory = PACKAGE_DIR.parent.joinpath(*package)
    return any((directory / (stem + suffix)).exists()
               for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def source_of(name: str) -> Path:
    return PACKAGE_DIR.parent.joinpath(*name.split(".")).with_suffix(".py")


def stale_modules(modules: dict[str, str]) -> list[str]:
    """Why each compiled module that cannot be trusted can't (empty: all current)."""
    problems = []
    for name, digest in sorted(modules.items()):
        source = source_of(name)
        if not compiled_module_exists(name):
            problems.append(f"{name} has no compiled module")
        elif source.exists() and hashlib.sha256(source.read_bytes()).hexdigest() != digest:
            problems.append(f"{source} changed since it was compiled")
    return problems


def select(environ: dict[str, str] | os._Environ[str] = os.environ) -> Build:
    """Decide which build runs; for the pure one, make the import system take the .py
    files. Raises ImportError when VALQD_BUILD asks for what cannot run."""
    requested = environ.get("VALQD_BUILD", "auto").strip().lower() or "auto"
    if requested not in ("auto", "compiled", "pure"):
        raise ImportError(f"valqd: VALQD_BUILD must be auto, compiled or pure, not "
                          f"{environ['VALQD_BUILD']!r}")
    try:
        record = json.loads(MANIFEST.read_text())
    except FileNotFoundError:
        if requested == "compiled":
            raise ImportError(f"valqd: VALQD_BUILD=compiled, but {PACKAGE_DIR} holds no "
                              f"compiled modules (build them: {REBUILD})") from None
        return Build("pure", "installed without compiled modules")
    except (OSError, ValueError) as exc:
        raise ImportError(f"valqd: can't read {MANIFEST}: {exc} (rebuild: {REBUILD})") from None
    modules: dict[str, str] = record.get("modules", {})
    if requested == "pure":
        return run_sources(modules, "VALQD_BUILD=pure")
    problems = stale_modules(modules)
    if not problems:
        return Build("compiled", f"{len(modules)} modules, {record.get('compiler', 'mypyc')}")
    if requested == "compiled":
        raise ImportError(f"valqd: VALQD_BUILD=compiled, but {'; '.join(problems)} "
                          f"(rebuild: {REBUILD})")
    print(f"valqd: running pure Python: {'; '.join(problems)} (rebuild: {REBUILD}, or set "
          f"VALQD_BUILD=pure to silence this)", file=sys.stderr)
    return run_sources(modules, "compiled modules out of date")


def run_sources(modules: dict[str, str], why: str) -> Build:
    sources = {name: source_of(name) for name in modules}
    missing = [str(path) for path in sources.values() if not path.exists()]
    if missing:
        raise ImportError(f"valqd: can't run pure Python ({why}): no {', '.join(missing)}")
    sys.meta_path.insert(0, SourceFirst(sources))
    return Build("pure", why)
