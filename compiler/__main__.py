"""`python -m compiler schema`: regenerate specs/schema.json from the pydantic models.

The schema is what editors use (through the `yaml-language-server` comment at the
top of every manifest) to autocomplete and validate manifests as they are typed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .specs import json_schema

SCHEMA = Path(__file__).resolve().parents[1] / "specs" / "schema.json"


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    if argv != ["schema"]:
        print("usage: python -m compiler schema   (writes specs/schema.json)", file=sys.stderr)
        return 2
    SCHEMA.write_text(schema_text())
    print(f"wrote {SCHEMA.relative_to(Path.cwd()) if SCHEMA.is_relative_to(Path.cwd()) else SCHEMA}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
