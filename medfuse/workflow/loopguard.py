"""Recognise medfuse's own output so a workflow never fuses it again.

A fused series carries ``ImageType`` DERIVED and names medfuse as the
software that made it (Manufacturer, SoftwareVersions or a Contributing
Equipment item), or says "medfuse" in its SeriesDescription. At series
level (a PACS query) only the description is available, so the runner also
excludes every series UID its own ledger recorded as an output.
"""

from __future__ import annotations

import pydicom

SOFTWARE_NAME = "medfuse"


def _mentions_medfuse(value) -> bool:
    if value is None:
        return False
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return any(_mentions_medfuse(v) for v in value)
    return SOFTWARE_NAME in str(value).lower()


def is_medfuse_series_description(description: str | None) -> bool:
    """True when a series description says the series came from medfuse."""
    return _mentions_medfuse(description)


def is_medfuse_output(ds: pydicom.Dataset) -> bool:
    """True when *ds* (a header; pixel data not needed) is a medfuse-derived image."""
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if image_type and "DERIVED" not in image_type:
        return False
    if _mentions_medfuse(ds.get("Manufacturer")) or _mentions_medfuse(ds.get("SoftwareVersions")):
        return True
    for item in ds.get("ContributingEquipmentSequence") or []:
        if _mentions_medfuse(item.get("Manufacturer")) or _mentions_medfuse(item.get("SoftwareVersions")):
            return True
    return "DERIVED" in image_type and is_medfuse_series_description(ds.get("SeriesDescription"))
