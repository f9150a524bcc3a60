"""valqd's builds as separate installations: one virtual environment per build.

A build is what `pip install .` makes of the checkout with `VALQD_BUILD=<build>` set:
`pure` (Python only) or `compiled` (the hot modules compiled with mypyc, the default when a
compiler is present). Each gets its own environment under `bench/.builds/<build>`, made with
the system's site-packages (hiredis, sortedcontainers and uvloop are the ones this
interpreter has, the same for every build) and a non-editable install of a copy of the
checkout's files, so the server runs what pip installed and never the checkout's sources.
An environment is rebuilt when the files it was installed from change (a stamp of their
contents), and the modules that came out compiled are counted, so a build that asked for
mypyc but got none is reported as such instead of measured under the wrong name.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
BUILDS = ("pure", "compiled")
DEFAULT_DIR = ROOT / "bench" / ".builds"
STAMP = "valqd-bench-stamp"


class BuildError(RuntimeError):
    pass


def source_files(root: Path = ROOT) -> list[str]:
    """What a source install can read: the checkout's top-level files (pyproject.toml, a
    build script, the README), everything under valqd/ and the build backend's buildsys/,
    tracked or new, not ignored."""
    listed = subprocess.run(["git", "-C", str(root), "ls-files", "-co", "--exclude-standard"],
                            capture_output=True, text=True, check=True).stdout.split("\n")
    return sorted(p for p in listed
                  if p and ("/" not in p or p.startswith(("valqd/", "buildsys/")))
                  and (root / p).is_file())


def stamp(build: str, files: list[str], root: Path = ROOT) -> str:
    """What the installation depends on: the build, the interpreter and every file but the
    Markdown ones (a README edit changes nothing that runs, and a compiled build takes
    minutes)."""
    digest = hashlib.sha256(f"{build}\n{sys.version}\n".encode())
    for name in files:
        if not name.endswith(".md"):
            digest.update(name.encode() + b"\0" + (root / name).read_bytes() + b"\0")
    return digest.hexdigest()


def venv_python(env_dir: Path) -> Path:
    return env_dir / "bin" / "python"


def _installed(python: Path) -> tuple[str, list[str]]:
    """(the installed package's directory, its compiled modules), asked of the build's own
    interpreter from a neutral directory so the checkout cannot be imported instead.
    mypyc's shared library (valqd/compiled__mypyc.*) is not a module: `valqd --version`
    does not count it either."""
    probe = ("import importlib.machinery as m, pathlib, valqd\n"
             "d = pathlib.Path(valqd.__file__).parent\n"
             "print(d)\n"
             "for p in sorted(d.rglob('*')):\n"
             "    if any(p.name.endswith(s) for s in m.EXTENSION_SUFFIXES) and \\\n"
             "            not p.name.startswith('compiled__mypyc.'):\n"
             "        print(p.relative_to(d))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VALQD_BUILD")}
    out = subprocess.run([str(python), "-c", probe], capture_output=True, text=True,
                         cwd=tempfile.gettempdir(), env=env)
    if out.returncode != 0:
        raise BuildError(f"{python} cannot import valqd:\n{out.stderr[-2000:]}")
    lines = out.stdout.splitlines()
    return lines[0], lines[1:]


def ensure(build: str, log: Callable[[str], None], builds_dir: Path = DEFAULT_DIR,
           root: Path = ROOT) -> dict[str, Any]:
    """The environment of `build`, made or brought up to date: {build, python, package,
    compiled (module paths), installed_now (bool)}."""
    if build not in BUILDS:
        raise BuildError(f"unknown build {build!r}; choose from {', '.join(BUILDS)}")
    env_dir = Path(builds_dir) / build
    python = venv_python(env_dir)
    files = source_files(root)
    wanted = stamp(build, files, root)
    stamp_file = env_dir / STAMP
    installed_now = False
    if not (python.exists() and stamp_file.exists() and stamp_file.read_text() == wanted):
        log(f"build {build}: installing the checkout into {env_dir}")
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages",
                            str(env_dir)], check=True, capture_output=True)
        with tempfile.TemporaryDirectory(prefix="valqd-bench-src-") as copy:
            for name in files:
                target = Path(copy) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(root / name, target)
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env["VALQD_BUILD"] = build
            # an ordinary isolated build: pip fetches what pyproject's build-system requires
            # (the package index caches it after the first time)
            result = subprocess.run(
                [str(python), "-m", "pip", "install", "--no-deps", "--force-reinstall",
                 "--quiet", "--disable-pip-version-check", copy],
                capture_output=True, text=True, env=env, cwd=copy)
        if result.returncode != 0:
            raise BuildError(f"pip install of the {build} build failed:\n"
                             f"{(result.stdout + result.stderr)[-3000:]}")
        stamp_file.write_text(wanted)
        installed_now = True
    package, compiled = _installed(python)
    return {"build": build, "python": str(python), "package": package, "compiled": compiled,
            "installed_now": installed_now}
