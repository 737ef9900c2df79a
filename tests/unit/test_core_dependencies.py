"""The dependency rule of the pure core (README, DESIGN §4): the core imports no Kafka client,
RocksDB, onnxruntime or Prometheus code, directly or through anything it imports.

Each core module is imported alone in a fresh interpreter, which then reports every module
loaded. Core packages are walked on disk, so a new file under `engine/pipeline/` or
`engine/kernel/` (the columnar layout) is checked the day it appears.
"""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
from pathlib import Path

import pytest

ENGINE = Path(__file__).resolve().parents[2] / "engine"
CORE = ("clock", "schemas", "topology", "windows", "ordering", "dedup", "features", "policy",
        "pipeline", "routing", "kernel")
FORBIDDEN = ("faust", "mode", "aiokafka", "kafka", "confluent_kafka", "onnxruntime",
             "rocksdict", "prometheus_client")
_SUFFIXES = (".py", *importlib.machinery.EXTENSION_SUFFIXES)


def core_modules() -> list[str]:
    """`engine.<name>` for each core module, and every module of a core package."""
    found: list[str] = []
    for name in CORE:
        if (ENGINE / f"{name}.py").is_file():
            found.append(f"engine.{name}")
        package = ENGINE / name
        if package.is_dir():  # a package, or a namespace package without __init__.py
            for path in sorted(package.rglob("*")):
                suffix = next((s for s in _SUFFIXES if path.name.endswith(s)), None)
                if suffix is None or "__pycache__" in path.parts:
                    continue
                parts = path.relative_to(ENGINE.parent).with_name(
                    path.name[: -len(suffix)]).parts
                found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


_PROBE = """
import importlib, json, sys
importlib.import_module(sys.argv[1])
print(json.dumps(sorted(sys.modules)))
"""


@pytest.mark.parametrize("module", core_modules())
def test_a_core_module_loads_no_kafka_rocksdb_onnxruntime_or_prometheus_code(module: str
                                                                              ) -> None:
    proc = subprocess.run([sys.executable, "-c", _PROBE, module], capture_output=True,
                          text=True, timeout=120, check=False, cwd=ENGINE.parent)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    bad = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    assert not bad, f"{module} pulls in {bad}"


def test_the_core_list_finds_the_modules_that_exist_today() -> None:
    found = core_modules()
    for name in ("clock", "schemas", "topology", "windows", "ordering", "dedup", "features",
                 "policy", "routing"):
        assert any(m == f"engine.{name}" or m.startswith(f"engine.{name}.") for m in found), name
    assert any(m == "engine.pipeline" or m.startswith("engine.pipeline.") for m in found)


def test_the_probe_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The check is not vacuous: a module that imports one of them is reported."""
    (tmp_path / "leaky_core.py").write_text("import engine.schemas\nimport rocksdict\n")
    proc = subprocess.run([sys.executable, "-c", _PROBE, "leaky_core"], capture_output=True,
                          text=True, timeout=120, check=False, cwd=tmp_path)
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "rocksdict" in loaded and "engine.schemas" in loaded
