"""Every plugin package keeps the contract docs/plugins.md describes: it declares its spec, has a
README documenting each of its config keys, and a sample.toml that the real loader accepts."""

from __future__ import annotations

import os
import re
from pathlib import Path

import msgspec
import pytest

from edged import config as edged_config
from edged import registry
from edged.config import DeviceBase, UplinkBase
from edged.plugin import DriverSpec, UplinkSpec

ROOT = Path(__file__).resolve().parents[2]


def _packages(kind: str) -> list[str]:
    return sorted(
        p.name for p in (ROOT / kind).iterdir() if (p / "__init__.py").exists() and not p.name.startswith("_")
    )


PLUGINS = [("drivers", n) for n in _packages("drivers")] + [("uplink", n) for n in _packages("uplink")]


def _spec(kind: str, name: str) -> DriverSpec[DeviceBase] | UplinkSpec[UplinkBase]:
    return registry.driver_spec(name) if kind == "drivers" else registry.uplink_spec(name)


def _own_keys(kind: str, cfg: type[msgspec.Struct]) -> set[str]:
    """The config keys the plugin adds to every entry's common ones."""
    base = DeviceBase if kind == "drivers" else UplinkBase
    return set(cfg.__struct_fields__) - set(base.__struct_fields__)


def test_every_plugin_folder_is_listed() -> None:
    assert {n for k, n in PLUGINS if k == "drivers"} >= {"sim", "modbus", "opcua", "hart", "analog"}
    assert {n for k, n in PLUGINS if k == "uplink"} >= {"file", "mqtt", "sparkplug", "http", "opcua"}


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_plugin_declares_its_spec(kind: str, name: str) -> None:
    spec = _spec(kind, name)
    module = registry.driver_module(name) if kind == "drivers" else registry.uplink_module(name)
    assert module.plugin is spec
    assert module.Config is spec.config, "Config is importable from the package"
    assert issubclass(spec.config, DeviceBase if kind == "drivers" else UplinkBase)


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_readme_documents_every_config_key(kind: str, name: str) -> None:
    readme = (ROOT / kind / name / "README.md").read_text()
    assert readme.startswith("# "), "a README with a title"

    # documented: in backticks (`key`, `key = ...`) or as a key in a TOML example
    def documented(key: str) -> bool:
        k = re.escape(key)
        return bool(re.search(rf"`{k}[`\s=]", readme) or re.search(rf"^\s*{k}\s*=", readme, re.M))

    missing = sorted(k for k in _own_keys(kind, _spec(kind, name).config) if not documented(k))
    assert not missing, f"{kind}/{name}/README.md does not document {missing}"


@pytest.mark.parametrize(("kind", "name"), PLUGINS, ids=[f"{k}/{n}" for k, n in PLUGINS])
def test_sample_toml_loads_with_the_real_loader(
    kind: str, name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = ROOT / kind / name / "sample.toml"
    assert sample.exists(), f"{kind}/{name} has no sample.toml"
    text = sample.read_text()
    # secrets a sample refers to: give them values, as an operator would (env, systemd credentials)
    for var in re.findall(r'env\s*=\s*"([A-Z0-9_]+)"', text):
        monkeypatch.setenv(var, "x" * 32)
    creds = tmp_path / "credentials"
    creds.mkdir()
    for cred in re.findall(r'credential\s*=\s*"([^"/]+)"', text):
        (creds / cred).write_text("y" * 32)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    for ref in re.findall(r'file\s*=\s*"([^"]+)"', text):
        if not os.path.isabs(ref):
            (tmp_path / ref).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / ref).write_text("z" * 32)
    cfg_file = tmp_path / "edged.toml"
    cfg_file.write_text(f'[gateway]\nid = "gw-sample"\ndata_dir = "{tmp_path / "data"}"\n\n{text}')
    cfg = edged_config.load(cfg_file)
    entries = cfg.devices if kind == "drivers" else cfg.uplinks
    assert entries and all(e.type == name for e in entries if isinstance(e, _spec(kind, name).config))
    assert any(e.type == name for e in entries), f"the sample has no {name} entry"
