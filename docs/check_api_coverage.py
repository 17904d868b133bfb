"""Fail (exit 1) if a name in ``jnn.__all__`` is missing from the API reference.

A name counts as documented when a ``::: path`` entry in ``docs/api/*.md`` renders the
same object (so ``::: jnn._regression_losses.huber`` covers ``jnn.huber``), or when an
entry renders a module whose ``__all__`` lists it (``::: jnn.activations`` covers ``jnn.relu``).

Run from anywhere: ``python docs/check_api_coverage.py``.
"""

import importlib
import re
import sys
from pathlib import Path

import jnn


def resolve(path: str):
    """Import ``a.b.c`` as a module, or as attribute ``c`` of the module ``a.b``."""
    try:
        return importlib.import_module(path)
    except ImportError:
        module, _, name = path.rpartition(".")
        return getattr(importlib.import_module(module), name)


def main() -> int:
    api = Path(__file__).resolve().parent / "api"
    documented: list = []
    errors = []
    for page in sorted(api.glob("*.md")):
        for path in re.findall(r"^:::\s*([\w.]+)", page.read_text(), flags=re.M):
            try:
                obj = resolve(path)
            except (ImportError, AttributeError) as error:
                errors.append(f"{page.name}: '::: {path}' does not resolve ({error})")
                continue
            documented.append(obj)
            documented.extend(getattr(obj, name) for name in getattr(obj, "__all__", ()))
    ids = {id(obj) for obj in documented}
    missing = [name for name in jnn.__all__ if id(getattr(jnn, name)) not in ids]
    for error in errors:
        print(error)
    if missing:
        print("Not in the API reference (docs/api/*.md):", ", ".join(missing))
    if errors or missing:
        return 1
    print(f"The API reference covers all {len(jnn.__all__)} names in jnn.__all__.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
