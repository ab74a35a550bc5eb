"""Rewrite the README's "Config reference" table from the config dataclasses.

    python scripts/config_reference.py        # run after adding or changing a config key
"""

import json
import os

from mbtrain.config import reference

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
HEAD = "| key | default | meaning |\n|---|---|---|\n"


def main() -> None:
    text = open(README, encoding="utf-8").read()
    start = text.index(HEAD) + len(HEAD)
    end = text.index("\n\n", start)
    rows = [f"| `{key}` | `{default if isinstance(default, str) else json.dumps(default)}` | {meaning} |"
            for key, default, meaning in reference()]
    with open(README, "w", encoding="utf-8") as f:
        f.write(text[:start] + "\n".join(rows) + text[end:])


if __name__ == "__main__":
    main()
