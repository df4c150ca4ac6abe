"""The layout's rules (docs/architecture.md, "Layers"), read from the source.

* imports go only downward: application -> public API -> solvers -> plans ->
  execution; shared modules (config, validation, maths) import only shared
  modules; the reference imports only the maths;
* no import cycle among the package's modules, function-level imports included;
* compute back ends (_C, the Triton kernels, scipy.fft, pyfftw, numpy.fft) are
  imported only by the execution layer;
* environment variables are read only in deconv_ext/config.py;
* no file of the repository cites a file that is not in it.
"""
from __future__ import annotations

import ast
import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = ROOT / "deconv_ext"
if not PKG.is_dir():  # tests run against an installed wheel: nothing to read
    pytest.skip("the package's source tree is not next to the tests", allow_module_level=True)

# Higher ranks may import lower ones; shared modules (rank 0) only each other.
RANKS = {"config": 0, "validation": 0, "maths": 0, "reference": 0, "execution": 1,
         "triton_kernels": 1, "_C": 1, "plans": 2, "solvers": 3, "functional": 4, "nn": 4,
         "psf": 4, "__init__": 4, "__main__": 5, "app": 5, "tiling": 4, "dask": 4,
         "build_check": 0, "_build_info": 0}
BACKENDS = ("deconv_ext._C", "deconv_ext.triton_kernels", "scipy.fft", "pyfftw", "numpy.fft")


def _modules():
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG).with_suffix("")
        yield ".".join(("deconv_ext",) + rel.parts), path


def _imports(name: str, path: pathlib.Path):
    """Absolute names of every module imported by ``path`` (anywhere in it)."""
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                stem = base[:len(base) - node.level + 1]
                mod = ".".join(stem + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            yield mod
            for alias in node.names:
                yield f"{mod}.{alias.name}"


def _known(mods, name):
    """The module ``name`` refers to (an attribute import resolves to its module)."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _group(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


MODULES = dict(_modules())
GRAPH = {m: {t for t in (_known(MODULES, i) for i in _imports(m, p) if i.startswith("deconv_ext"))
             if t and t != m} for m, p in MODULES.items()}


def test_imports_go_downward():
    bad = []
    for mod, targets in GRAPH.items():
        src = _group(mod)
        for t in targets:
            dst = _group(t)
            if mod.endswith(".__init__") and t.startswith(mod[:-len("__init__")]):
                continue  # a package's __init__ re-exports its own modules
            if dst == src or dst == "__init__" and t == "deconv_ext":
                continue
            if src == "reference" and dst != "maths":
                bad.append((mod, t))
            elif RANKS[dst] > RANKS[src] or (RANKS[src] == 0 and RANKS[dst] != 0):
                bad.append((mod, t))
    assert not bad, f"imports that go up the layers: {bad}"


def test_no_import_cycles():
    # Package __init__ files re-export their children: an edge child -> its own
    # package is the normal Python way to reach a sibling, not a cycle of jobs.
    graph = {m: {t for t in ts if not (t + ".").startswith(m.rpartition(".")[0] + ".")
                 or not t.endswith("__init__")} for m, ts in GRAPH.items()}
    seen, stack, cycles = set(), [], []

    def visit(m):
        if m in stack:
            cycles.append(stack[stack.index(m):] + [m])
            return
        if m in seen:
            return
        seen.add(m)
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if t.endswith(".__init__") or t == "deconv_ext":
                continue
            visit(t)
        stack.pop()

    for m in sorted(graph):
        visit(m)
    assert not cycles, f"import cycles: {cycles}"


def test_back_ends_only_in_the_execution_layer():
    bad = []
    for mod, path in MODULES.items():
        if _group(mod) == "execution":
            continue
        for imp in _imports(mod, path):
            if imp.startswith(BACKENDS) or imp in ("deconv_ext._C", "deconv_ext.triton_kernels"):
                bad.append((mod, imp))
    assert not bad, f"back ends imported outside deconv_ext/execution: {bad}"


def test_environment_read_only_in_config():
    bad = [mod for mod, path in MODULES.items()
           if mod != "deconv_ext.config" and re.search(r"os\.environ|getenv", path.read_text())]
    assert not bad, f"environment read outside deconv_ext/config.py: {bad}"


def test_no_reference_to_files_outside_the_repository():
    suffixes = {".py", ".md", ".cpp", ".h", ".sh", ".toml", ".txt", ".cfg"}
    texts = [p for p in ROOT.rglob("*") if p.suffix in suffixes and p.is_file()
             and not any(part in (".venv", "build", ".git", "out") or part.endswith(".egg-info")
                         for part in p.relative_to(ROOT).parts)]
    design = "DESIGN" + ".md"  # the team's brief lives outside the repository
    bad = [str(p.relative_to(ROOT)) for p in texts
           if design in p.read_text(errors="replace") or "../" + "shared" in p.read_text(errors="replace")]
    assert not bad, f"files citing a document outside the repository: {bad}"
