"""The package's declaration (pyproject.toml) and the pinned environment stay in step.

pyproject.toml ``[project]`` is the one declaration of what deconv_ext needs;
requirements.txt / requirements-dev.txt pin one tested environment. These
tests read the files of the checkout the tests belong to.
"""
from __future__ import annotations

import glob
import os
import re

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(ROOT, "pyproject.toml")
if not (os.path.isfile(PYPROJECT) and os.path.isdir(os.path.join(ROOT, "deconv_ext"))):
    # The tests run against an installed wheel, without the checkout they read.
    pytest.skip("not a source checkout: no pyproject.toml and deconv_ext/ next to the tests",
                allow_module_level=True)

# Extras whose packages the pinned dev environment need not hold.
UNPINNED_EXTRAS = {"dask"}


def _name(requirement: str) -> str:
    """The normalised distribution name of a requirement line (PEP 503)."""
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert m, requirement
    return re.sub(r"[-_.]+", "-", m.group(1)).lower()


def _project():
    with open(PYPROJECT, "rb") as f:
        return tomllib.load(f)


def _declared():
    """{group: set of names}: "dependencies" and each extra, self-references dropped."""
    project = _project()["project"]
    groups = {"dependencies": project["dependencies"], **project["optional-dependencies"]}
    own = _name(project["name"])
    return {g: {_name(r) for r in reqs} - {own} for g, reqs in groups.items()}


def _pinned():
    names = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "requirements*.txt"))):
        with open(path) as f:
            for line in f:
                line = line.split("#", 1)[0].strip()
                if line and not line.startswith("-"):
                    names[_name(line)] = os.path.basename(path)
    return names


def test_every_pinned_requirement_is_declared():
    declared = set().union(*_declared().values())
    missing = {n: f for n, f in _pinned().items() if n not in declared}
    assert not missing, f"pinned but not declared in pyproject.toml: {missing}"


def test_every_declared_requirement_is_pinned():
    pinned = _pinned()
    missing = {g: sorted(names - set(pinned)) for g, names in _declared().items()
               if g not in UNPINNED_EXTRAS and names - set(pinned)}
    assert not missing, f"declared in pyproject.toml but not pinned in requirements*.txt: {missing}"


def test_torch_is_a_lower_bound_and_not_a_build_requirement():
    project = _project()
    torch_reqs = [r for r in project["project"]["dependencies"] if _name(r) == "torch"]
    assert len(torch_reqs) == 1 and re.fullmatch(r"torch\s*>=\s*2\.6", torch_reqs[0]), torch_reqs
    assert not any(_name(r) == "torch" for r in project["build-system"]["requires"])


def test_the_cli_extra_holds_what_the_app_imports():
    from deconv_ext.app import cli, errors

    needed = {errors._DISTRIBUTIONS[m] for mods in cli.NEEDS.values() for m in mods}
    assert needed <= _declared()["cli"]
    assert set(errors._DISTRIBUTIONS.values()) <= _declared()["cli"]


def test_every_package_folder_is_shipped():
    tool = _project()["tool"]["setuptools"]
    listed = set(tool["packages"])
    found = set()
    for init in glob.glob(os.path.join(ROOT, "deconv_ext", "**", "__init__.py"), recursive=True):
        rel = os.path.relpath(os.path.dirname(init), ROOT)
        found.add(rel.replace(os.sep, "."))
    for pkg, folder in tool["package-dir"].items():
        assert os.path.isfile(os.path.join(ROOT, folder, "__init__.py")), folder
        found.add(pkg)
    assert found == listed, f"packages in the tree {sorted(found)} != listed {sorted(listed)}"


def test_the_console_script_names_an_existing_main():
    from deconv_ext.app import cli

    assert _project()["project"]["scripts"]["deconv-ext"] == "deconv_ext.app.cli:main"
    assert callable(cli.main)
