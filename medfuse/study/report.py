"""The QC report: one self-contained HTML page (images embedded as PNG data URIs).

Sections: inputs and outputs (tables); mid-section montages of every
source and the fused volume in three orientations (axial = the fixed grid's
slice plane, coronal and sagittal = the other two image axes; pixels
resampled to square millimetres), and of the colour series when one was
written; the base and detail weight maps on the same three planes (the
weights the fusion pass itself used, kept by it:
:class:`medfuse.volume.chunk_task.WeightPlanes`, so the report fuses
nothing again); the registration overlay of each moving volume on the
fixed one (fixed in green, moving in magenta: grey where they agree) with its
coverage outline; the fusion metrics of :mod:`medfuse.metrics` on three
representative slices (25 %, 50 %, 75 % of the slices); timings per stage; and
the provenance table (the full record is ``provenance.json`` beside it).
"""

from __future__ import annotations

import base64
import html
import io
import json
import mmap
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import SimpleITK as sitk
from PIL import Image

from medfuse.core.colour import ycbcr_to_rgb
from medfuse.metrics import METRIC_NAMES, compute_all
from medfuse.volume.dispatch import default_workers

__all__ = ["build_report", "colour_sections", "png_data_uri", "sections"]

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
figure{display:inline-block;margin:4px;text-align:center}figcaption{font-size:.8em}
img{image-rendering:pixelated;background:#000}.note{font-size:.85em;color:#555}
"""


def png_data_uri(image: np.ndarray) -> str:
    """An (H, W) float [0, 1] or (H, W, 3) image as a ``data:image/png;base64`` URI."""
    array = np.clip(np.asarray(image, np.float32), 0, 1)
    buffer = io.BytesIO()
    Image.fromarray(np.rint(array * 255).astype(np.uint8)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _mid_planes(volume: np.ndarray, spacing_xyz: Sequence[float]) -> dict[str, tuple[np.ndarray, tuple[float, float]]]:
    """The three mid planes of a (Z, Y, X, ...) volume with their (row, column) pixel sizes in mm.

    Rows are flipped for coronal/sagittal so that increasing slice index is up.
    """
    z, y, x = volume.shape[:3]
    sx, sy, sz = spacing_xyz
    return {"axial": (volume[z // 2], (sy, sx)),
            "coronal": (volume[:, y // 2][::-1], (sz, sx)),
            "sagittal": (volume[:, :, x // 2][::-1], (sz, sy))}


def _square_pixels(plane: np.ndarray, pixel_mm: tuple[float, float], size: int) -> np.ndarray:
    """A (rows, columns) float plane resampled to square pixels, about *size* pixels on its longer side."""
    row_mm, col_mm = pixel_mm
    height_mm, width_mm = plane.shape[0] * row_mm, plane.shape[1] * col_mm
    scale = size / max(height_mm, width_mm)
    shape = (max(1, round(width_mm * scale)), max(1, round(height_mm * scale)))
    return np.asarray(Image.fromarray(np.asarray(plane, np.float32)).resize(shape, Image.BILINEAR))


def sections(volume: np.ndarray, spacing_xyz: Sequence[float], size: int = 192) -> dict[str, np.ndarray]:
    """Mid sections of a (Z, Y, X) volume, resampled to square pixels and about *size* pixels wide.

    Returns
    -------
    dict with 'axial' (Y, X), 'coronal' (Z, X) and 'sagittal' (Z, Y) arrays,
    rows flipped for coronal/sagittal so that increasing slice index is up.
    """
    out = {name: _square_pixels(plane, mm, size) for name, (plane, mm) in _mid_planes(volume, spacing_xyz).items()}
    _release(volume)
    return out


def _release(volume: np.ndarray) -> None:
    """Unmap the pages a memory-mapped volume's mid planes touched (a sagittal plane touches every page).

    The scratch files stay in the page cache; only this process's resident set shrinks, so the report
    adds a few planes to the run's peak memory instead of every volume it shows. ``np.memmap`` keeps its
    ``mmap`` object in ``_mmap`` (views share it); plain arrays have none and are left alone.
    """
    mapped = getattr(volume, "_mmap", None)
    # Read-only maps only: on a copy-on-write map MADV_DONTNEED would drop pages written in this process.
    if (mapped is not None and getattr(volume, "mode", None) == "r" and hasattr(mapped, "madvise")
            and hasattr(mmap, "MADV_DONTNEED")):
        mapped.madvise(mmap.MADV_DONTNEED)


def colour_sections(fused_luma: np.ndarray, indices: np.ndarray, palette, spacing_xyz: Sequence[float],
                    size: int = 192) -> dict[str, np.ndarray]:
    """Mid sections of the colour series, as :func:`sections` but (..., 3) RGB in [0, 1].

    Built from the three planes only (fused luma with the functional source's
    palette chroma, the colour series' rule: :func:`medfuse.study.colour.rgb_slices`),
    never from an RGB copy of the volume.
    """
    lumas = {name: (np.array(plane, np.float32), mm) for name, (plane, mm) in _mid_planes(fused_luma, spacing_xyz).items()}
    index_planes = {name: np.array(plane) for name, (plane, _) in _mid_planes(indices, spacing_xyz).items()}
    _release(fused_luma)
    _release(indices)
    out = {}
    for name, index_plane in index_planes.items():
        luma, mm = lumas[name]
        ycbcr = np.concatenate([luma[..., None], palette.ycbcr[index_plane, 1:]], axis=-1)
        rgb = np.clip(ycbcr_to_rgb(ycbcr), 0.0, 1.0)
        out[name] = np.stack([_square_pixels(rgb[..., c], mm, size) for c in range(3)], axis=-1)
    return out


def build_report(
    arrays: Sequence[np.ndarray],
    masks: Sequence[np.ndarray | None],
    fused: np.ndarray,
    labels: Sequence[str],
    weight_planes: dict[str, np.ndarray],
    provenance: dict,
    grid: sitk.Image,
    colour: tuple | None = None,
) -> str:
    """The report's HTML text.

    Parameters
    ----------
    arrays : K arrays (Z, Y, X) float32 in [0, 1]
        The sources on the fixed grid, as fused.
    masks : K arrays (Z, Y, X) bool or None
        Coverage of each source (None: everywhere).
    fused : ndarray (Z, Y, X) float32
    labels : K str
    weight_planes : dict
        The weights the fusion used on the mid planes, as kept by the fusion
        pass (:meth:`medfuse.volume.chunk_task.WeightPlanes.arrays`):
        'axial' (2, K, Y, X), 'coronal' (2, K, Z, X), 'sagittal' (2, K, Z, Y).
    provenance : dict
        The run's provenance record (timings, inputs, outputs, registration...).
    grid : SimpleITK.Image
        The fixed grid (for the spacing).
    colour : (fused_luma, indices, palette), optional
        The colour series when one was written (its mid sections are shown).
    """
    spacing = grid.GetSpacing()
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>medfuse QC report</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>medfuse {html.escape(provenance.get('medfuse_version', ''))} QC report</h1>",
             "<p class='note'>Full provenance: <a href='provenance.json'>provenance.json</a> (beside this page).</p>"]
    parts.append(_alignment_section(provenance))
    parts.append(_inputs_table(provenance))
    parts.append("<h2>Sources and fused result (mid sections)</h2>")
    names = [*labels, "FUSED"]
    montage = [sections(v, spacing) for v in (*arrays, fused)]
    for orientation in ("axial", "coronal", "sagittal"):
        figures = [_figure(cut[orientation], f"{n} ({orientation})") for cut, n in zip(montage, names)]
        parts.append("<div>" + "".join(figures) + "</div>")
    if colour is not None:
        coloured = colour_sections(*colour, spacing)
        parts.append("<h2>Colour series (mid sections)</h2><div>"
                     + "".join(_figure(coloured[o], f"colour ({o})") for o in ("axial", "coronal", "sagittal"))
                     + "</div>")
    parts.append(_weights_section(weight_planes, labels, spacing))
    parts.append(_overlay_section(montage[0], arrays, masks, labels, spacing))
    parts.append(_metrics_section(arrays, fused))
    parts.append(_table("Timings per stage (s)", provenance.get("timings_s", {})))
    parts.append(_table("Provenance", _flatten({k: v for k, v in provenance.items() if k != "timings_s"})))
    parts.append("</body></html>")
    return "\n".join(parts)


def _alignment_section(provenance: dict) -> str:
    """The alignment check's verdict at the top of the page: a red box when a registration is doubtful."""
    checks = provenance.get("alignment_check") or []
    doubts = [w for check in checks for w in check.get("warnings", [])]
    if doubts:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in doubts)
        return ("<div style='border:3px solid #c00;padding:0.5em;color:#c00'><h2>DOUBTFUL REGISTRATION</h2>"
                f"<p>The independent alignment check doubts this result; do not use it before checking the "
                f"overlay.</p><ul>{items}</ul></div>")
    values = ", ".join(f"{c['agreement']:.3f} (peak {c['peak']:+.3f})" for c in checks)
    return f"<p class='note'>Alignment check: no doubt found (edge agreement {html.escape(values)}).</p>"


def _inputs_table(provenance: dict) -> str:
    rows = []
    for item in provenance.get("inputs", []):
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(item.get(k, '')))}</td>" for k in
                                     ("role", "label", "modality", "size_xyz", "spacing_mm", "series_instance_uid"))
                    + "</tr>")
    return ("<h2>Inputs</h2><table><tr><th>role</th><th>label</th><th>modality</th><th>size (x, y, z)</th>"
            f"<th>spacing mm</th><th>series UID</th></tr>{''.join(rows)}</table>" + _outputs_table(provenance))


def _outputs_table(provenance: dict) -> str:
    """One row per output: its file or folder, and its other fields as 'name: value' lines."""
    rows = []
    for name, record in provenance.get("outputs", {}).items():
        record = record if isinstance(record, dict) else {"value": record}
        where = record.get("folder") or record.get("file") or ""
        details = "<br>".join(f"{html.escape(key.replace('_', ' '))}: {html.escape(_short(value))}"
                              for key, value in _flatten({k: v for k, v in record.items()
                                                          if k not in ("folder", "file")}).items())
        rows.append(f"<tr><th>{html.escape(name)}</th><td>{html.escape(str(where))}</td><td>{details}</td></tr>")
    if not rows:
        return ""
    return ("<h2>Outputs</h2><table><tr><th>output</th><th>file or folder</th><th>details</th></tr>"
            + "".join(rows) + "</table>")


def _figure(image: np.ndarray, caption: str) -> str:
    return (f"<figure><img src='{png_data_uri(image)}' width='{image.shape[1]}' height='{image.shape[0]}' "
            f"alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}</figcaption></figure>")


def _weights_section(planes: dict[str, np.ndarray], labels, spacing) -> str:
    # Pseudo-volumes with one row (coronal) or one column (sagittal) let sections() lay them out and
    # scale them like the source montages.
    views = {"axial": lambda w: sections(w[None], spacing)["axial"],
             "coronal": lambda w: sections(w[:, None, :], spacing)["coronal"],
             "sagittal": lambda w: sections(w[:, :, None], spacing)["sagittal"]}
    parts = []
    for orientation, view in views.items():
        figures = [_figure(view(planes[orientation][kind, source]), f"{name} weight: {label} ({orientation})")
                   for source, label in enumerate(labels) for kind, name in enumerate(("base", "detail"))]
        parts.append("<div>" + "".join(figures) + "</div>")
    return ("<h2>Weight maps (mid sections)</h2><p class='note'>The weights the fusion pass used, kept by it "
            "on these three planes (white = 1; detail weights clipped to [0, 1] for display; a source without "
            "data in a slice has weight 0 there). Coronal and sagittal planes stack the middle row and column "
            "of each slice's weights.</p>" + "".join(parts))


def _overlay_section(fixed: dict[str, np.ndarray], arrays, masks, labels, spacing) -> str:
    parts = ["<h2>Registration overlay</h2><p class='note'>Fixed in green, moving (resampled) in magenta: "
             "grey where they agree. Yellow: edge of the moving volume's coverage.</p>"]
    for array, mask, label in zip(arrays[1:], masks[1:], labels[1:]):
        moving = sections(array, spacing)
        cover = ({name: np.ones_like(plane) for name, plane in moving.items()} if mask is None
                 else sections(mask, spacing))
        figures = []
        for orientation in ("axial", "coronal", "sagittal"):
            f, m = fixed[orientation], moving[orientation]
            rgb = np.stack([m, f, m], axis=-1)
            c = cover[orientation] > 0.5
            inner = c & np.roll(c, 1, 0) & np.roll(c, -1, 0) & np.roll(c, 1, 1) & np.roll(c, -1, 1)
            rgb[c & ~inner] = (1.0, 1.0, 0.0)
            figures.append(_figure(rgb, f"{label} on fixed ({orientation})"))
        parts.append("<div>" + "".join(figures) + "</div>")
    return "".join(parts)


def _metrics_section(arrays, fused, threads: int | None = None) -> str:
    """The metrics table of three slices (25 %, 50 %, 75 %), computed by *threads* threads (default: one per CPU)."""
    z = fused.shape[0]
    indices = sorted({z // 4, z // 2, (3 * z) // 4})
    cases = {index: ([np.asarray(a[index]) for a in arrays], np.asarray(fused[index])) for index in indices}
    # Two tasks per slice, QP (about 70 % of a slice's time) and the seven others, in parallel threads (the
    # metrics' FFTs, NumPy and compiled loops release the GIL), the QP tasks first so that two threads
    # finish together. compute_all gives each value as one call for all eight would.
    tasks = [(index, group) for group in _METRIC_GROUPS for index in indices]
    with ThreadPoolExecutor(max_workers=threads or default_workers()) as pool:
        results = list(pool.map(lambda task: compute_all(*cases[task[0]], names=task[1]), tasks))
    scores = {index: {} for index in indices}
    for (index, _), values in zip(tasks, results):
        scores[index].update(values)
    rows = {f"slice {index}": {name: round(float(values[name]), 4) for name in METRIC_NAMES}
            for index, values in scores.items()}
    head = "".join(f"<th>{html.escape(n)}</th>" for n in METRIC_NAMES)
    body = "".join(f"<tr><th>{html.escape(r)}</th>" + "".join(f"<td>{v[n]}</td>" for n in METRIC_NAMES) + "</tr>"
                   for r, v in rows.items())
    return ("<h2>Fusion metrics on representative slices</h2><p class='note'>medfuse.metrics, sources and fused "
            f"in [0, 1]; higher is better for all.</p><table><tr><th></th>{head}</tr>{body}</table>")


#: The report's thread tasks per slice: QP alone (the costliest by far on a 512² slice), then the rest.
_METRIC_GROUPS = (("QP",), tuple(name for name in METRIC_NAMES if name != "QP"))


def _table(title: str, items: dict) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_short(v))}</td></tr>" for k, v in items.items())
    return f"<h2>{html.escape(title)}</h2><table>{body}</table>"


def _short(value, limit: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."


def _flatten(record: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(_flatten(item, f"{name}[{i}]."))
        else:
            out[name] = value
    return out
