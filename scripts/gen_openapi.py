"""Writes engine/openapi.json: the fraud topology's OpenAPI document, as a fraud worker serves
it at /openapi.json (a worker builds its own topology's with engine.api.openapi at start).

Run after changing the API or the fraud event schema: .venv/bin/python scripts/gen_openapi.py
(tests/unit/test_api.py fails while the committed file differs from what this writes).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import topologies  # noqa: E402
from engine.api.openapi import render as render_for  # noqa: E402


def render() -> str:
    return render_for(topologies.get("fraud"))


if __name__ == "__main__":
    out = Path(__file__).resolve().parent.parent / "engine" / "openapi.json"
    out.write_text(render())
    print(f"wrote {out.name}")
