"""Fail (exit 1) if a name in ``jnn.__all__`` is missing from the API reference pages."""

import re
import sys
from pathlib import Path

import jnn

api = Path(__file__).parent / "api"
documented = set()
for page in api.glob("*.md"):
    documented.update(re.findall(r"^::: jnn\.(\w+)", page.read_text(), flags=re.M))
text = (Path(__file__).parent / "api" / "activations.md").read_text()
# Activations and initializers are documented through their modules.
covered_by_module = set(jnn.activations.__all__) if "::: jnn.activations" in text else set()
missing = sorted(set(jnn.__all__) - documented - covered_by_module)
if missing:
    print("Not in the API reference (docs/api/*.md):", ", ".join(missing))
    sys.exit(1)
print(f"API reference covers all {len(jnn.__all__)} public names.")
