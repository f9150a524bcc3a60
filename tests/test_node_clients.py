"""Node clients from the npm registry, unchanged, against a real valqd: node-redis (RESP2 and
RESP3) and iovalkey run create, push, pop, ack, a blocking pop served by another
connection, a MULTI/EXEC transaction and an aborted one (tests/node/valq_session.mjs).
`.ci/run` installs node and the packages (`npm ci --prefix tests/node`)."""

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).resolve().parent / "node"
SESSION = NODE_DIR / "valq_session.mjs"
PACKAGES = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
STEPS = 11


def installed_version(package: str) -> str | None:
    manifest = NODE_DIR / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.exists() else None


@pytest.mark.parametrize("package, resp", [("redis", 2), ("redis", 3), ("iovalkey", 2)],
                         ids=["node-redis-resp2", "node-redis-resp3", "iovalkey-resp2"])
def test_node_client_session(valqd, package, resp):
    if shutil.which("node") is None:
        pytest.skip("needs node: apt-get install -y nodejs npm, then "
                    "npm ci --prefix tests/node")
    version = installed_version(package)
    if version is None:
        pytest.skip(f"needs the npm package {package}: npm ci --prefix tests/node")
    assert version == PACKAGES[package], f"run npm ci --prefix tests/node ({version} installed)"
    result = subprocess.run(["node", str(SESSION), package, str(valqd.port), str(resp)],
                            capture_output=True, text=True, timeout=60, cwd=NODE_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["ok", package, f"RESP{resp}", str(STEPS)]
