"""Loading a plug-in that a manifest names as `module:PATH:NAME` (see compiler/plugins.py).

The file is imported from the project root as a module of its own name (`ingot_plugin.` and
its path, so two plug-ins called `model.py` in different folders do not collide), with the
project root on `sys.path`, so the plug-in can import its neighbours (`import models.common`)
or use relative imports within its package. An import that fails, or a NAME the module does
not define when it runs, is a BuildError naming the file; the plug-in's own traceback is kept
(as the error's cause) because it is the author's code that failed.
"""

from __future__ import annotations

import importlib.util
import sys
import traceback
from pathlib import Path

from targets import BuildError

PREFIX = "module:"
STAMP = "__ingot_stamp__"  # (mtime_ns, size) of the file a plug-in module was imported from


def is_plugin(value: object) -> bool:
    return isinstance(value, str) and value.startswith(PREFIX)


def load(root: Path, ref: str, what: str):
    """The object `NAME` of the plug-in `module:PATH:NAME` of the project at `root`."""
    _, rel, name = ref.split(":")
    path = (Path(root) / rel).resolve()
    module_name = "ingot_plugin." + ".".join(Path(rel).with_suffix("").parts)
    module = sys.modules.get(module_name)
    stamp = _stamp(path)
    if module is None or getattr(module, "__file__", None) != str(path) or getattr(module, STAMP, None) != stamp:
        if str(Path(root).resolve()) not in sys.path:
            sys.path.insert(0, str(Path(root).resolve()))
        _package("ingot_plugin", Path(root).resolve())
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise BuildError(f"{what}: '{rel}' cannot be imported as a Python module")
        module = importlib.util.module_from_spec(spec)
        setattr(module, STAMP, stamp)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            where = traceback.extract_tb(exc.__traceback__)[-1]
            raise BuildError(f"{what}: importing '{rel}' failed: {type(exc).__name__}: {exc} "
                             f"({Path(where.filename).name}, line {where.lineno})") from exc
    if not hasattr(module, name):
        raise BuildError(f"{what}: '{rel}' defines no `{name}` when it runs: define it at the module's top level")
    return getattr(module, name)


def _stamp(path: Path) -> tuple[int, int] | None:
    """What tells an edited plug-in file from the one imported before (in a long-lived process:
    a Ray worker, `doit -n`)."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _package(name: str, root: Path) -> None:
    """A namespace package `name` over the project root, so a plug-in's relative imports
    (`from .common import x`) resolve inside the project."""
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    package = importlib.util.module_from_spec(spec)
    package.__path__ = [str(root)]
    sys.modules[name] = package
