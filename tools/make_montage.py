"""Draw docs/img/fusion-montage.png: one shared pair per medical task, fused by each method.

    python tools/make_montage.py [--data ../shared/data/pairs2d] [-o docs/img/fusion-montage.png]

For each pair, two rows: the images as they are, then the same images with
every grey level multiplied by 4 (clipped at 255), so that a faint glow in
the black background (a halo) shows. Columns: source A, source B, the paper
preset, medfuse's previous default (two-scale, box 7), its default,
pixel-wise maximum, GFF (Li et al. 2013). Every
method fuses the sources' luma (as ``medfuse evaluate`` does); the fused
images are rounded to 8 bits as a written file would be.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from medfuse.api import fuse
from medfuse.core.baselines import gff, maximum
from medfuse.core.colour import rgb_to_ycbcr
from medfuse.core.config import FusionConfig
from medfuse.io.images import read_image

ROOT = Path(__file__).resolve().parents[1]
PAIRS = ("ct-mri/cdd_30", "pet-mri/cdd_20", "spect-mri/cdd_26", "t1-t2/ifcnn_c07")
COLUMNS = ("source A", "source B", "paper preset", "previous default", "medfuse default", "pixel max", "GFF")
LABEL_HEIGHT = 18
GAIN = 4


def luma(path: Path) -> np.ndarray:
    image = read_image(path).astype(np.float32) / 255.0
    return rgb_to_ycbcr(image)[..., 0] if image.ndim == 3 else image


def to_8bit(image: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def row_images(folder: Path) -> list[np.ndarray]:
    sources = np.stack([luma(p) for p in sorted(folder.glob("[ab].*"))])
    fused = [
        fuse(list(sources), config=FusionConfig.paper()).fused,
        # The default before the pyramid rule: --preset photo without its envelope clip.
        fuse(list(sources), config=FusionConfig.photo().replace(envelope_clip=False)).fused,
        fuse(list(sources), config=FusionConfig()).fused,
        maximum(sources),
        gff(sources),
    ]
    return [to_8bit(image) for image in (*sources, *fused)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "pairs2d")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "img" / "fusion-montage.png")
    args = parser.parse_args()
    rows = []
    for pair in PAIRS:
        images = row_images(args.data / pair)
        rows.append((pair, images))
        rows.append((f"{pair}, x{GAIN}", [np.minimum(255, image.astype(np.int32) * GAIN).astype(np.uint8) for image in images]))
    tile_h, tile_w = rows[0][1][0].shape
    sheet = Image.new("L", (tile_w * len(COLUMNS), LABEL_HEIGHT + len(rows) * (tile_h + LABEL_HEIGHT)), 255)
    draw = ImageDraw.Draw(sheet)
    for column, name in enumerate(COLUMNS):
        draw.text((column * tile_w + 4, 3), name, fill=0)
    for index, (title, images) in enumerate(rows):
        top = LABEL_HEIGHT + index * (tile_h + LABEL_HEIGHT)
        draw.text((4, top + 3), title, fill=0)
        for column, image in enumerate(images):
            sheet.paste(Image.fromarray(image), (column * tile_w, top + LABEL_HEIGHT))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")


if __name__ == "__main__":
    main()
