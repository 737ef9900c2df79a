"""engine.topology_loader: a topology named by its entry point, by package.module:ATTR or by
package.module (its TOPOLOGY), and one clear error for each way that fails."""

from __future__ import annotations

import sys

import pytest

import topologies
from engine.errors import ConfigError
from engine.topology_loader import available_topologies, load_topology

FRAUD = topologies.get("fraud")


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A package `userpkg` in the current directory (not installed), removed afterwards."""
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "topo.py").write_text("from topologies.fraud import TOPOLOGY\nOTHER = 3\n")
    (pkg / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    yield
    for name in [m for m in sys.modules if m == "userpkg" or m.startswith("userpkg.")]:
        del sys.modules[name]


def test_the_shipped_topology_is_registered_under_its_entry_point() -> None:
    assert "fraud" in available_topologies()
    assert load_topology("fraud") is FRAUD
    assert load_topology(" fraud ") is FRAUD


def test_module_and_attribute_paths_find_the_same_object(user_package) -> None:
    assert load_topology("userpkg.topo:TOPOLOGY") is FRAUD  # from the current directory
    assert load_topology("userpkg.topo") is FRAUD  # its TOPOLOGY
    assert load_topology("topologies.fraud:TOPOLOGY") is FRAUD


@pytest.mark.parametrize("spec, message", [
    ("", "give a registered name, package.module:ATTR or package.module"),
    ("nosuch", "not a registered name (streamwise.topologies: "),
    ("nosuch", "no module named 'nosuch'"),
    ("not a name", "nor package.module:ATTR"),
    ("userpkg.topo:", "expected package.module:ATTR"),
    ("userpkg.topo:MISSING", "module userpkg.topo has no attribute 'MISSING'"),
    ("userpkg.topo:OTHER", "names an object of type int, not an engine.Topology"),
    ("userpkg.broken:TOPOLOGY", "importing userpkg.broken failed: RuntimeError: boom at import"),
    ("userpkg.absent:TOPOLOGY", "no module named 'userpkg.absent'"),
])
def test_each_failure_names_what_was_tried(user_package, spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_topology(spec)
    assert str(err.value).startswith(f"unknown topology {spec.strip()!r}: ")
    assert message in str(err.value)
