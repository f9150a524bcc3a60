"""valqd's build backend: setuptools', deciding first whether to compile with mypyc.

`VALQD_BUILD` chooses: `compiled` (mypyc, or the build fails saying why), `pure` (Python
files only) or `auto`, the default: compiled when a C compiler that finds Python's headers
works, pure otherwise. An editable install (`pip install -e .`) stays pure under `auto`: it
would compile in place, and a compiled module keeps running after its .py is edited (valqd
notices, see valqd/buildinfo.py, but a developer should not pay a rebuild per edit).

mypy (which brings mypyc) is asked for as a build requirement only when the build
compiles, so a pure install needs nothing beyond setuptools. setup.py builds; this module
decides, and both print the decision as one line starting `valqd build:`.
"""

import hashlib
import json
import os
import sys
import sysconfig
import tempfile
import tomllib
from pathlib import Path
from typing import Any, NamedTuple

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (build_sdist, get_requires_for_build_sdist,  # noqa: F401
                                   prepare_metadata_for_build_editable,
                                   prepare_metadata_for_build_wheel)

# The modules each request runs through, from the profile of the pipelined job cycle
# (issue 16), the server's connections (every read runs through server.py: compiled, an
# unpipelined PUSH took 62.9k instructions instead of 71.9k), and the AOF loader, whose
# speed is the start-up time. Left interpreted:
# errors.py, whose subclasses override the class attribute `code` (compiled, every subclass
# reported the base class's), valqd/__init__.py and buildinfo.py, which decide whether the
# compiled modules may run, and every module that only runs at start-up or on rare
# commands, where compiling saves nothing.
COMPILED = [
    "valqd/engine/engine.py",
    "valqd/engine/queue.py",
    "valqd/engine/record.py",
    "valqd/engine/order.py",
    "valqd/engine/databases.py",
    "valqd/resp/parser.py",
    "valqd/resp/encode.py",
    "valqd/persistence/format.py",
    "valqd/persistence/aof.py",
    "valqd/persistence/loader.py",
    "valqd/commands/args.py",
    "valqd/commands/context.py",
    "valqd/commands/dispatch.py",
    "valqd/commands/lean.py",
    "valqd/commands/valq.py",
    "valqd/server.py",
]
GROUP = "valqd.compiled"  # mypyc's shared library: valqd/compiled__mypyc.*.so
MANIFEST = "valqd/compiled.json"  # read by valqd/buildinfo.py
MODES = ("auto", "compiled", "pure")
MYPY_REQUIREMENT = "mypy>=1.10"  # mypyc with Python 3.11 and 3.12 support
KIND_VARIABLE = "VALQD_BUILD_KIND"  # set by the hooks for setup.py: wheel or editable


class BuildError(Exception):
    """The build cannot do what VALQD_BUILD asks."""


class Decision(NamedTuple):
    compiled: bool
    reason: str

    def line(self, modules: int) -> str:
        if self.compiled:
            return f"valqd build: compiled with mypyc ({modules} modules; {self.reason})"
        return f"valqd build: pure Python ({self.reason})"


def requested_mode(environ: Any = os.environ) -> str:
    mode = environ.get("VALQD_BUILD", "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise BuildError(f"VALQD_BUILD must be auto, compiled or pure, not "
                         f"{environ['VALQD_BUILD']!r}")
    return mode


def compiler_problem() -> str | None:
    """Why no extension module can be compiled here, or None when a C compiler compiles a
    file that includes Python.h."""
    from setuptools._distutils import ccompiler, errors
    from setuptools._distutils.sysconfig import customize_compiler

    compiler = ccompiler.new_compiler()
    customize_compiler(compiler)
    with tempfile.TemporaryDirectory() as scratch:
        source = os.path.join(scratch, "probe.c")
        with open(source, "w") as file:
            file.write("#include <Python.h>\nint main(void) { return 0; }\n")
        try:
            compiler.compile([source], output_dir=scratch,
                             include_dirs=[sysconfig.get_paths()["include"]])
        except (errors.CompileError, errors.DistutilsExecError, OSError) as exc:
            name = " ".join(getattr(compiler, "compiler_so", None) or ["cc"])
            return f"no working C compiler ({name} failed: {str(exc).strip() or 'no output'})"
    return None


def decide(kind: str, environ: Any = os.environ) -> Decision:
    """Compile or not, and why, for a `kind` of build ("wheel" or "editable")."""
    mode = requested_mode(environ)
    if mode == "pure":
        return Decision(False, "VALQD_BUILD=pure")
    if mode == "auto" and kind == "editable":
        return Decision(False, "an editable install stays pure unless VALQD_BUILD=compiled")
    problem = compiler_problem()
    if problem is None:
        return Decision(True, f"VALQD_BUILD={mode}")
    if mode == "compiled":
        raise BuildError(f"VALQD_BUILD=compiled, but there is {problem}; install gcc (or "
                         f"clang) and Python's headers, or build with VALQD_BUILD=pure")
    return Decision(False, f"{problem}; install a C compiler to compile it")


def _requires(kind: str) -> list[str]:
    """mypy, and the runtime dependencies when compiling: mypyc type-checks the modules it
    compiles, and they import hiredis and sortedcontainers (pip's build environment holds
    only what is asked for here)."""
    try:
        compiling = decide(kind).compiled
    except BuildError as exc:  # say it here, before pip fetches anything
        sys.exit(f"error: {exc}")
    if not compiling:
        return []
    with open("pyproject.toml", "rb") as file:  # pip runs the hooks in the project root
        dependencies: list[str] = tomllib.load(file)["project"]["dependencies"]
    return [MYPY_REQUIREMENT, *dependencies]


def get_requires_for_build_wheel(config_settings: Any = None) -> list[str]:
    return _setuptools.get_requires_for_build_wheel(config_settings) + _requires("wheel")


def get_requires_for_build_editable(config_settings: Any = None) -> list[str]:
    return (_setuptools.get_requires_for_build_editable(config_settings)
            + _requires("editable"))


def build_wheel(wheel_directory: str, config_settings: Any = None,
                metadata_directory: str | None = None) -> str:
    os.environ[KIND_VARIABLE] = "wheel"
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_editable(wheel_directory: str, config_settings: Any = None,
                   metadata_directory: str | None = None) -> str:
    os.environ[KIND_VARIABLE] = "editable"
    return _setuptools.build_editable(wheel_directory, config_settings, metadata_directory)


def module_name(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".")


def manifest(root: Path, compiler: str) -> dict[str, Any]:
    """What valqd/buildinfo.py checks on import: each compiled module's source, hashed
    before mypyc reads it."""
    return {"compiler": compiler,
            "modules": {module_name(path): sha256_of(root / path) for path in COMPILED}}


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def remove_compiled_in_place(root: Path) -> list[Path]:
    """Delete the compiled modules that an earlier in-place (editable) build left in the
    source tree, and its manifest, so that the tree runs what this build makes of it."""
    record = root / MANIFEST
    if not record.exists():
        return []
    names = [*json.loads(record.read_text()).get("modules", {}), GROUP + "__mypyc"]
    removed = []
    for name in names:
        *package, stem = name.split(".")
        for built in root.joinpath(*package).glob(f"{stem}.*.so"):
            built.unlink()
            removed.append(built)
    record.unlink()
    return [*removed, record]
