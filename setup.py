"""Builds valqd with or without mypyc; buildsys/valqd_build.py decides (VALQD_BUILD) and
lists the compiled modules. The metadata is in pyproject.toml.

Beside the compiled modules the build writes valqd/compiled.json, the SHA-256 of each
compiled module's source, which valqd checks on import (valqd/buildinfo.py) so that an
edited .py never hides behind its stale compiled module.
"""

import json
import os
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "buildsys"))
import valqd_build  # noqa: E402  (the backend's directory, see pyproject.toml)


class BuildCompiled(build_ext):
    """build_ext that writes the manifest beside the modules it built (in place too, for an
    editable install)."""

    def run(self) -> None:
        in_place = self.inplace or getattr(self, "editable_mode", False)
        super().run()
        text = json.dumps(built_manifest, indent=1, sort_keys=True) + "\n"
        Path(self.build_lib, valqd_build.MANIFEST).write_text(text)
        if in_place:
            (ROOT / valqd_build.MANIFEST).write_text(text)


def compiled_extensions(kind: str) -> tuple[list[Any], dict[str, Any]]:
    """The extension modules to build and their manifest (none for a pure build); says
    which build in one line."""
    try:
        decision = valqd_build.decide(kind)
        if kind == "editable" and valqd_build.remove_compiled_in_place(ROOT):
            print("valqd build: removed the compiled modules of an earlier in-place build")
        if not decision.compiled:
            print(decision.line(0))
            return [], {}
        try:
            from mypy.version import __version__ as mypy_version
            from mypyc.build import mypycify
        except ImportError as exc:
            if valqd_build.requested_mode() == "compiled":
                raise valqd_build.BuildError(
                    f"VALQD_BUILD=compiled, but mypy (mypyc) is not importable in the build "
                    f"environment ({exc}): pip install mypy, or let pip's build isolation "
                    f"install it") from None
            print(valqd_build.Decision(False, f"mypy is not importable in the build "
                                              f"environment ({exc}); pip install mypy to "
                                              f"compile").line(0))
            return [], {}
    except valqd_build.BuildError as exc:
        sys.exit(f"error: {exc}")
    print(decision.line(len(valqd_build.COMPILED)), flush=True)
    record = valqd_build.manifest(ROOT, f"mypyc {mypy_version}")  # before mypyc reads them
    return mypycify(valqd_build.COMPILED, opt_level="3", group_name=valqd_build.GROUP), record


# Only the build hooks set the kind; while pip just reads the metadata nothing is decided.
kind = os.environ.get(valqd_build.KIND_VARIABLE)
extensions, built_manifest = compiled_extensions(kind) if kind else ([], {})
setup(ext_modules=extensions, cmdclass={"build_ext": BuildCompiled})
