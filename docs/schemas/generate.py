"""Writes the JSON Schema of every file a covidxr stage writes into this folder (NAME.json, one per entry of
`covidxr.runs.SCHEMAS`), generated from the pydantic models; docs/reference.md includes them. Run it after changing a
schema: `python docs/schemas/generate.py` (tests/test_runs.py fails while a file here differs)."""

import json
from pathlib import Path

from covidxr.runs import SCHEMAS


def schema_text(name: str) -> str:
    return json.dumps(SCHEMAS[name].model_json_schema(), indent=2) + "\n"


if __name__ == "__main__":
    for name in SCHEMAS:
        path = Path(__file__).parent / f"{name}.json"
        path.write_text(schema_text(name))
        print(f"wrote {path}")
