"""2-D image reading and atomic writing."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medfuse.errors import InputError, WriteError
from medfuse.io import images
from medfuse.io.images import read_image, write_image


def test_reads_the_shared_pairs_as_uint8_grey_or_rgb(shared_data):
    grey = read_image(shared_data / "pairs2d/ct-mri/ifcnn_c01/a.tif")
    rgb = read_image(shared_data / "pairs2d/pet-mri/cdd_11/b.png")
    jpeg = read_image(shared_data / "pairs2d/multifocus/lytro_01/a.jpg")
    assert grey.dtype == np.uint8 and grey.shape == (256, 256)
    assert rgb.dtype == np.uint8 and rgb.shape == (256, 256, 3)
    assert jpeg.shape == (520, 520, 3)


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff"])
def test_16_bit_grey_round_trips_exactly(tmp_path, suffix):
    data = (np.arange(64 * 80, dtype=np.uint32) * 13 % 65536).astype(np.uint16).reshape(64, 80)
    path = write_image(tmp_path / f"x{suffix}", data)
    back = read_image(path)
    assert back.dtype == np.uint16 and np.array_equal(back, data)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_8_bit_grey_and_rgb_round_trip_exactly(tmp_path, suffix):
    rng = np.random.default_rng(0)
    for data in (rng.integers(0, 256, (20, 30), dtype=np.uint8), rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)):
        assert np.array_equal(read_image(write_image(tmp_path / f"x{suffix}", data)), data)


def test_float_data_is_scaled_to_the_bit_depth(tmp_path):
    data = np.array([[0.0, 0.5, 1.0]], np.float32)
    assert read_image(write_image(tmp_path / "a.png", data)).tolist() == [[0, 128, 255]]
    assert read_image(write_image(tmp_path / "b.png", data, bit_depth=16)).tolist() == [[0, 32768, 65535]]


def test_palette_and_opaque_alpha_images_are_read_as_rgb(tmp_path):
    rgb = np.zeros((4, 4, 3), np.uint8)
    rgb[1:3, 1:3] = (200, 10, 30)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    Image.fromarray(np.dstack([rgb, np.full((4, 4), 255, np.uint8)])).save(tmp_path / "a.png")
    assert np.array_equal(read_image(tmp_path / "p.png"), rgb)
    assert np.array_equal(read_image(tmp_path / "a.png"), rgb)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"not an image", "not a PNG"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "cannot read")],
)
def test_unreadable_files_raise_input_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_image(path)


def test_transparent_images_are_refused(tmp_path):
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)).save(tmp_path / "t.png")
    with pytest.raises(InputError, match="transparent"):
        read_image(tmp_path / "t.png")


def test_unsupported_outputs_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(InputError, match="must end in"):
        write_image(tmp_path / "x.bmp", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="16 bits"):
        write_image(tmp_path / "x.jpg", np.zeros((4, 4), np.uint16))
    with pytest.raises(InputError, match="16 bits"):
        write_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), bit_depth=16)
    with pytest.raises(WriteError, match="does not exist"):
        write_image(tmp_path / "missing" / "x.png", np.zeros((4, 4), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    write_image(target, np.full((4, 4), 7, np.uint8))

    def failing_save(self, fp, format=None, **params):
        fp.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(images.Image.Image, "save", failing_save)
    with pytest.raises(WriteError, match="No space left"):
        write_image(target, np.zeros((4, 4), np.uint8))
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]
    monkeypatch.undo()
    assert read_image(target).tolist() == [[7] * 4] * 4
