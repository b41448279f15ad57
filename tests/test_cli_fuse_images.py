"""`medfuse fuse-images` end to end on the shared pairs, and its one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from medfuse.cli.app import main
from medfuse.io.images import read_image, write_image


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture(scope="module")
def pairs(shared_data):
    return shared_data / "pairs2d"


@pytest.mark.parametrize(
    ("folder", "pattern", "colour"),
    [
        ("ct-mri/ivrl_1", "*.png", False),
        ("ct-mri/cdd_11", "*.png", False),  # equal-channel RGB PNGs: grey out
        ("pet-mri/cdd_12", "*.png", True),
        ("spect-mri/cdd_13", "*.png", True),
        ("t1-t2/ifcnn_c07", "*.tif", False),
        ("ir-vis/ifcnn_Camp", "*.png", False),
        ("multifocus/lytro_triple_01", "*.jpg", True),
        ("multiexposure/chair", "*.jpg", True),
    ],
)
def test_fuses_every_task_of_the_shared_pairs(pairs, tmp_path, capsys, folder, pattern, colour):
    inputs = sorted((pairs / folder).glob(pattern))
    assert len(inputs) >= 2
    out = tmp_path / "fused.png"
    code, stdout, stderr = run(["fuse-images", *inputs, "-o", out], capsys)
    assert code == 0, stderr
    fused = read_image(out)
    first = read_image(inputs[0])
    assert fused.shape[:2] == first.shape[:2]
    assert (fused.ndim == 3) == colour
    assert fused.std() > 5  # a real image, not a flat one
    assert "fused" in stdout


def test_save_weights_writes_maps_and_exact_weights(pairs, tmp_path, capsys):
    folder = pairs / "ct-mri/ivrl_1"
    weights = tmp_path / "weights"
    code, _, stderr = run(["fuse-images", folder / "a.png", folder / "b.png", "-o", tmp_path / "f.png", "--save-weights", weights], capsys)
    assert code == 0, stderr
    names = sorted(p.name for p in weights.iterdir())
    assert names == ["base_weight_1.png", "base_weight_2.png", "detail_weight_1.png", "detail_weight_2.png", "weights.npz"]
    with np.load(weights / "weights.npz") as data:
        assert data["base"].shape == (2, 256, 256)
        assert np.allclose(data["base"].sum(axis=0), 1, atol=1e-5)
        assert np.allclose(data["detail"].sum(axis=0), 1, atol=1e-5)


def test_options_reach_the_fusion(pairs, tmp_path, capsys):
    folder = pairs / "ct-mri/ivrl_1"
    outputs = {}
    for name, options in {
        "paper": ["--preset", "paper"],
        "max-abs": ["--preset", "photo", "--detail-rule", "max-abs", "--base-rule", "average"],
        "detail": ["--preset", "photo", "--features-on", "detail"],
        "detail-warm": ["--rule", "two-scale", "--features-on", "detail", "--detail-temperature", "1e9", "--save-weights", tmp_path / "warm"],
        "default": [],
        "energy": ["--decision", "energy"],
    }.items():
        outputs[name] = tmp_path / f"{name}.png"
        code, stdout, stderr = run(["fuse-images", folder / "a.png", folder / "b.png", "-o", outputs[name], *options], capsys)
        assert code == 0, stderr
    images = {name: read_image(path) for name, path in outputs.items()}
    assert not np.array_equal(images["paper"], images["max-abs"])
    assert not np.array_equal(images["paper"], images["detail"])
    assert not np.array_equal(images["detail"], images["detail-warm"])
    assert not np.array_equal(images["default"], images["energy"])
    assert not np.array_equal(images["default"], images["paper"])
    with np.load(tmp_path / "warm" / "weights.npz") as data:
        np.testing.assert_allclose(data["detail"], 0.5, atol=1e-6)  # T -> infinity: equal detail weights


def test_two_scale_options_with_the_pyramid_rule_are_refused(pairs, tmp_path, capsys):
    folder = pairs / "ct-mri/ivrl_1"
    out = tmp_path / "f.png"
    code, _, stderr = run(["fuse-images", folder / "a.png", folder / "b.png", "-o", out, "--detail-rule", "max-abs"], capsys)
    assert code == 2
    assert "--detail-rule" in stderr and "two-scale" in stderr and len(stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_16_bit_grey_inputs_give_a_16_bit_output(pairs, tmp_path, capsys):
    folder = pairs / "ct-mri/ivrl_1"
    a16, b16 = tmp_path / "a16.png", tmp_path / "b16.png"
    write_image(a16, read_image(folder / "a.png").astype(np.uint16) * 257)
    write_image(b16, read_image(folder / "b.png").astype(np.uint16) * 257)
    code, _, stderr = run(["fuse-images", a16, b16, "-o", tmp_path / "f.tif", "--decision", "energy"], capsys)
    assert code == 0, stderr
    assert read_image(tmp_path / "f.tif").dtype == np.uint16


def test_errors_are_one_line_with_exit_codes_and_write_nothing(pairs, tmp_path, capsys):
    ct = pairs / "ct-mri/ivrl_1/a.png"
    mr = pairs / "ct-mri/ivrl_1/b.png"
    ir = pairs / "ir-vis/ifcnn_Camp/a.png"
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"definitely not a png")
    out = tmp_path / "out" / "f.png"
    out.parent.mkdir()
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    cases = [
        (["fuse-images", ct, "-o", out], 2, "at least two"),
        (["fuse-images", ct, ir, "-o", out], 2, "same size"),
        (["fuse-images", ct, garbage, "-o", out], 2, "cannot read"),
        (["fuse-images", ct, tmp_path / "missing.png", "-o", out], 2, "no such file"),
        (["fuse-images", ct, mr, "-o", blocker / "f.png"], 6, "is not a folder"),
        (["fuse-images", ct, mr, "-o", tmp_path / "absent" / "f.png"], 6, "does not exist"),
        (["fuse-images", ct, mr, "-o", tmp_path / "out" / "f.bmp"], 2, "must end in"),
        (["fuse-images", ct, mr, "-o", out, "--base-rule", "max"], 2, "base_rule"),
        (["fuse-images", ct, mr, "-o", out, "--detail-temperature", "0"], 2, "detail_temperature"),
        (["fuse-images", ct, mr, "-o", out, "--model", "no-such-model"], 7, "unknown model"),
        (["fuse-images", ct, mr, "-o", ct], 2, "also an input"),
    ]
    for argv, expected_code, message in cases:
        code, stdout, stderr = run(argv, capsys)
        assert code == expected_code, (argv, stderr)
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("medfuse: error:") and message in lines[0], stderr
    assert list(out.parent.iterdir()) == []
    assert read_image(ct).shape == (256, 256)


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_output_folder_is_refused(pairs, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, _, stderr = run(["fuse-images", pairs / "ct-mri/ivrl_1/a.png", pairs / "ct-mri/ivrl_1/b.png", "-o", folder / "f.png"], capsys)
        assert code == 6 and "not writable" in stderr
    finally:
        folder.chmod(0o755)


def test_cli_runs_as_a_subprocess(pairs, tmp_path):
    folder = pairs / "ct-mri/ivrl_1"
    out = tmp_path / "f.png"
    proc = subprocess.run(
        [sys.executable, "-c", "from medfuse.cli.app import main; main()", "fuse-images", str(folder / "a.png"), str(folder / "b.png"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_image(out).shape == (256, 256)
