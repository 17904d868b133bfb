"""What the tests of ``examples/`` share: importing a script by its path (``examples/`` is
not a package). The working-directory fixtures are in ``conftest.py``."""

import importlib.util
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(script: str | Path):
    """Import ``examples/{script}.py`` (a name), or the script at a path, as a module."""
    path = Path(script) if isinstance(script, Path) else EXAMPLES / f"{script}.py"
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    # registered first, as an import would: dataclasses (jnn.Module subclasses) look
    # their module up to resolve string annotations
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module
