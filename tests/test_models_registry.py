"""The model registry: manifest, sha256 verification, `medfuse models list|verify`, installed package."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from medfuse.cli.app import main
from medfuse.errors import ModelError
from medfuse.features import list_models, load_extractor, verify_models
from medfuse.features.manifest import MANIFEST_NAME, read_manifest, shipped_manifest_path, write_manifest


@pytest.fixture()
def user_registry(tmp_path, monkeypatch):
    """An empty user models folder (MEDFUSE_MODELS_DIR) for this test."""
    folder = tmp_path / "user-models"
    folder.mkdir()
    monkeypatch.setenv("MEDFUSE_MODELS_DIR", str(folder))
    return folder


def _register_copy(folder: Path, name: str) -> Path:
    """Register a copy of the shipped default trunk under *name* in *folder*; return the copy's path."""
    shipped = read_manifest(shipped_manifest_path())
    entry = shipped.models[shipped.default]
    row = entry.depths[entry.default_depth]
    copy_name = f"{name}-d{row.depth}.onnx"
    shutil.copyfile(entry.path(row.depth), folder / copy_name)
    copy = dataclasses.replace(entry, name=name, depths={row.depth: dataclasses.replace(row, file=copy_name)})
    write_manifest(folder / MANIFEST_NAME, {name: copy})
    return folder / copy_name


def test_shipped_manifest_describes_every_file_fully(repo_root):
    manifest_path = repo_root / "models" / MANIFEST_NAME
    raw = tomllib.loads(manifest_path.read_text())
    manifest = read_manifest(manifest_path)
    assert manifest.default == "efficientnet-lite0-int8"
    for entry in manifest.models.values():
        assert entry.licence and entry.weights_source and entry.export_command and entry.architecture
        for depth, row in entry.depths.items():
            data = (repo_root / "models" / row.file).read_bytes()
            assert hashlib.sha256(data).hexdigest() == row.sha256
            assert row.stride >= 2 and row.channels >= 1
            assert raw["models"][entry.name]["depths"][str(depth)]["sha256"] == row.sha256


def test_list_shows_the_default_and_resnet50_as_export_only(user_registry):
    rows = list_models()
    defaults = [r for r in rows if r.is_default]
    assert [(r.name, r.depth) for r in defaults] == [("efficientnet-lite0-int8", 3)]
    resnet = [r for r in rows if r.name == "resnet50"]
    assert len(resnet) == 1 and resnet[0].origin == "export only" and resnet[0].depth is None


def test_verify_passes_on_the_shipped_files(user_registry):
    results = verify_models()
    assert results and all(r.ok for r in results)


def test_one_changed_byte_is_refused_naming_file_and_expected_hash(user_registry):
    copy = _register_copy(user_registry, "tampered")
    expected = hashlib.sha256(copy.read_bytes()).hexdigest()
    assert load_extractor("tampered").name == "tampered@3"  # intact copy loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0x01
    copy.write_bytes(bytes(data))
    from medfuse.features.registry import _sessions

    _sessions.clear()  # a new process would not have the session cached
    with pytest.raises(ModelError) as info:
        load_extractor("tampered")
    message = str(info.value)
    assert str(copy) in message and expected in message and "\n" not in message
    failed = [r for r in verify_models() if not r.ok]
    assert [(r.name, r.path) for r in failed] == [("tampered", copy)]


def _shipped_file_count() -> int:
    return sum(len(entry.depths) for entry in read_manifest(shipped_manifest_path()).models.values())


def test_cli_verify_exits_7_on_a_tampered_file(user_registry, capsys):
    copy = _register_copy(user_registry, "tampered")
    copy.write_bytes(copy.read_bytes()[:-1] + b"\x00")
    assert main(["models", "verify"]) == 7
    captured = capsys.readouterr()
    assert "FAIL tampered depth 3" in captured.out
    total = _shipped_file_count() + 1
    assert captured.err.startswith(f"medfuse: error: 1 of {total} model files failed verification")


def test_cli_list_and_verify_succeed(user_registry, capsys):
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "efficientnet-lite0" in out and "3 (default)" in out and "resnet50: available by export only" in out
    assert main(["models", "verify"]) == 0
    assert f"{_shipped_file_count()} model file(s) verified" in capsys.readouterr().out


@pytest.mark.parametrize("model, depth, message", [
    ("nope", None, "unknown model 'nope'"),
    ("resnet50", None, "medfuse models export resnet50"),
    ("efficientnet-lite0", 9, "has no exported depth 9"),
])
def test_unknown_model_or_depth_is_a_model_error(user_registry, model, depth, message):
    with pytest.raises(ModelError, match=message):
        load_extractor(model, depth)


def test_missing_file_names_the_file_and_how_to_rebuild(user_registry):
    copy = _register_copy(user_registry, "gone")
    copy.unlink()
    with pytest.raises(ModelError, match=f"model file {copy} is missing"):
        load_extractor("gone")


def test_export_refuses_a_shipped_name_and_bad_depths(user_registry, capsys):
    assert main(["models", "export", "efficientnet-lite0", "--depth", "3"]) == 2
    assert "is a shipped model" in capsys.readouterr().err
    assert main(["models", "export", "resnet50", "--weights", "x.pth", "--depth", "5..1", "--name", "r"]) == 2
    assert "--depth range" in capsys.readouterr().err


@pytest.mark.slow
def test_non_editable_install_finds_the_shipped_models(repo_root, tmp_path):
    """`pip install .` (not editable) ships the model files; verify and load work from another folder."""
    source = tmp_path / "src"
    source.mkdir()
    for item in ("pyproject.toml", "README.md"):
        shutil.copy(repo_root / item, source / item)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.part")
    shutil.copytree(repo_root / "medfuse", source / "medfuse", ignore=ignore)
    models = source / "models"
    models.mkdir()
    for item in (repo_root / "models").iterdir():
        if item.name == MANIFEST_NAME or item.suffix == ".onnx":
            shutil.copy(item, models / item.name)
    # Build the wheel as `pip install .` does: in an isolated build environment with the build
    # requirements of pyproject.toml from the package index, so whatever setuptools the test
    # environment holds (torch's install replaces it) plays no part (issue 16). Then install it into
    # a fresh venv that sees this interpreter's dependencies but imports its own medfuse.
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--disable-pip-version-check",
                            "-w", str(tmp_path / "dist"), str(source)], capture_output=True, text=True, cwd=tmp_path)
    if build.returncode != 0 and "satisfies the requirement" in build.stderr:
        pytest.skip("building the wheel needs setuptools>=68 and wheel from a package index, and none answered: "
                    + build.stderr.strip().splitlines()[-1])
    assert build.returncode == 0, build.stderr
    (wheel,) = (tmp_path / "dist").glob("medfuse-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    # This interpreter's pip installs into the venv (pip >= 22.3 --python), sparing a pip bootstrap.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                    "--disable-pip-version-check", str(wheel)], check=True, cwd=tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "MEDFUSE_MODELS_DIR": str(tmp_path / "no-user-models")}
    code = ("import medfuse, medfuse.features as f; from medfuse.features.manifest import shipped_manifest_path; "
            "print(medfuse.__file__); print(shipped_manifest_path()); print(f.load_extractor().name)")
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True, cwd=elsewhere,
                         env=env).stdout.splitlines()
    assert out[0].startswith(str(venv)), "the installed copy, not the source checkout, must be imported"
    assert out[1].startswith(str(venv)) and out[1].endswith("share/medfuse/models/manifest.toml")
    assert out[2] == "efficientnet-lite0-int8@3"
    verify = subprocess.run([str(venv / "bin" / "medfuse"), "models", "verify"], capture_output=True, text=True,
                            cwd=elsewhere, env=env)
    assert verify.returncode == 0, verify.stderr
    assert f"{_shipped_file_count()} model file(s) verified" in verify.stdout


def test_list_and_verify_work_without_torch(tmp_path):
    """As on a fresh clone without the export extra: torch made unimportable in a subprocess."""
    code = ("import sys; sys.modules['torch'] = None; from medfuse.cli.app import main; "
            "a = main(['models', 'list']); b = main(['models', 'verify']); "
            "c = main(['models', 'export', 'resnet50', '--weights', sys.argv[1], '--depth', '3']); print(a, b, c)")
    weights = tmp_path / "w.pth"
    weights.write_bytes(b"not used")
    env = {**os.environ, "MEDFUSE_MODELS_DIR": str(tmp_path / "user")}
    out = subprocess.run([sys.executable, "-c", code, str(weights)], capture_output=True, text=True, env=env)
    assert out.stdout.strip().splitlines()[-1] == "0 0 7", out.stdout + out.stderr
    assert "exporting needs torch" in out.stderr and "pip install 'medfuse[export]'" in out.stderr
