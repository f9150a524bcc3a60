"""`python -m valqd.docs`: regenerate README.md's command, settings and HTTP route references
from the command table, the settings table and the route table, so each is described once."""

import re
import sys
from pathlib import Path

from .commands.table import reference as command_reference
from .config import reference as settings_reference
from .http.routes import reference as http_reference

SECTIONS = {"commands": command_reference, "settings": settings_reference,
            "http": http_reference}


def render(readme: str) -> str:
    for name, make in SECTIONS.items():
        pattern = re.compile(rf"(<!-- {name}:begin -->\n).*?(<!-- {name}:end -->)", re.S)
        readme = pattern.sub(lambda m: m.group(1) + make() + "\n" + m.group(2), readme)
    return readme


def main() -> int:
    path = Path(sys.argv[1] if len(sys.argv) > 1 else "README.md")
    text = path.read_text()
    updated = render(text)
    if updated != text:
        path.write_text(updated)
        print(f"updated {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
