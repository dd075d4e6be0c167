"""Size limits of the package (scripts/check_structure.py): no module over 400 lines, no function over 60."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "check_structure.py"
PACKAGE = REPO / "tfsft"


def _load_script():
    spec = importlib.util.spec_from_file_location("check_structure", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the script loads
    spec.loader.exec_module(module)
    return module


check_structure = _load_script()


def _module_param(path: Path):
    return pytest.param(path, id=path.relative_to(PACKAGE).as_posix())


@pytest.mark.parametrize("path", [_module_param(p) for p in sorted(PACKAGE.rglob("*.py"))])
def test_module_within_size_limits(path):
    offenders = check_structure.check_file(path, shown=path.relative_to(REPO).as_posix())
    assert not offenders, "split these: " + ", ".join(map(str, offenders))


def _function(name: str, body_lines: int) -> str:
    return f"def {name}():\n" + "".join(f"    x{i} = {i}\n" for i in range(body_lines - 1))


def test_script_names_each_offender_and_exits_1(tmp_path):
    (tmp_path / "fits.py").write_text(_function("sixty", 60))  # exactly at the limit: allowed
    (tmp_path / "long_function.py").write_text(
        "class Holder:\n" + "".join("    " + line + "\n" for line in _function("sixty_one", 61).splitlines())
    )
    (tmp_path / "long_module.py").write_text("".join(f"x{i} = {i}\n" for i in range(401)))
    result = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout.splitlines() == ["long_function.py:Holder.sixty_one:61", "long_module.py:<module>:401"]

    (tmp_path / "long_function.py").unlink()
    (tmp_path / "long_module.py").unlink()
    clean = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True)
    assert clean.returncode == 0 and clean.stdout == ""
