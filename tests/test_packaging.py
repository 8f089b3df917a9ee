"""The distribution installs ONE namespace, ``agentstream``; core stays pure."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PURE_MODULES = ["ids", "keys", "events", "codec", "state", "settings", "errors"]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    [built] = out.glob("agentstream-*.whl")
    return built


def test_the_wheel_has_no_top_level_package_but_agentstream(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"agentstream"}


def test_the_wheel_carries_the_lua_scripts_and_type_markers(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "agentstream/core/lua/submit.lua" in names
    assert "agentstream/core/lua/common.lua" in names
    for package in ("core", "consumers", "projections", "django_app"):
        assert f"agentstream/{package}/py.typed" in names


def imports_of(path: Path) -> set[str]:
    imported: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    return imported


def test_every_source_package_is_in_the_wheel(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("core", "consumers", "projections", "django_app"):
        for init in (ROOT / folder).rglob("__init__.py"):
            if "__pycache__" in init.parts:
                continue
            inside = init.relative_to(ROOT / folder).as_posix()
            assert f"agentstream/{folder}/{inside}" in names, f"add the package of {init} to pyproject.toml"


@pytest.mark.parametrize("module", PURE_MODULES)
def test_pure_core_modules_import_neither_redis_nor_django(module: str) -> None:
    assert not imports_of(ROOT / "core" / f"{module}.py") & {"redis", "django", "fakeredis", "psycopg"}


def test_core_never_imports_django_anywhere() -> None:
    for path in (ROOT / "core").rglob("*.py"):
        assert "django" not in imports_of(path), path
