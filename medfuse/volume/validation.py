"""Known-transform experiments: how a site (or a test) checks registration accuracy.

Take a real volume, move a second contrast of it by a known rigid transform,
register it back, and measure the target registration error (TRE) over the
fixed volume's foreground. The benchmark (bench/registration.py) and the tests
build every accuracy case from these functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk

from medfuse.volume.masks import foreground_mask
from medfuse.volume.transforms import mask_points_mm, target_registration_error, transform_geometry


def rigid_about_centre(
    image: sitk.Image, rotation_deg: Sequence[float], translation_mm: Sequence[float]
) -> sitk.Euler3DTransform:
    """A rigid transform rotating about the centre of *image*'s grid.

    Parameters
    ----------
    image : SimpleITK.Image, 3-D
    rotation_deg : (3,) floats
        Euler angles about x, y, z in degrees (ITK's Euler3D order).
    translation_mm : (3,) floats
        Translation in LPS millimetres.
    """
    transform = sitk.Euler3DTransform()
    transform.SetCenter(image.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in image.GetSize()]))
    transform.SetRotation(*np.radians(rotation_deg))
    transform.SetTranslation(list(translation_mm))
    return transform


def inverted_contrast(image: sitk.Image, seed: int = 0) -> sitk.Image:
    """A second "contrast" of *image*: inverted, squared, with 1 % Gaussian noise.

    The mapping is non-linear and reverses the intensity order, so only a
    multi-modal metric can align it with the original. Values are scaled by
    the 99.5th percentile first; the output is float32 in about [0, 1000].
    """
    values = sitk.GetArrayFromImage(image)
    unit = np.clip(values / np.percentile(values, 99.5), 0.0, 1.0)
    noise = np.random.default_rng(seed).normal(0.0, 0.01, unit.shape)
    out = sitk.GetImageFromArray(((1.0 - unit) ** 2 + noise).astype(np.float32) * 1000)
    out.CopyInformation(image)
    return out


def moved_by(image: sitk.Image, known: sitk.Transform, *, resample: bool = True) -> sitk.Image:
    """*image* placed where *known* sends it, so registering it back must recover *known*.

    With ``resample=False`` only the header moves (voxels untouched); with
    ``resample=True`` the data are also resampled (linear) onto the moved
    grid, so interpolation blur and a cut field of view make the case harder.
    Outside the original field of view the value is the image minimum.
    """
    grid = transform_geometry(image, known)
    if not resample:
        return grid
    background = float(sitk.GetArrayViewFromImage(image).min())
    return sitk.Resample(image, grid, known.GetInverse(), sitk.sitkLinear, background, sitk.sitkFloat32)


def mean_tre(estimated: sitk.Transform, reference: sitk.Transform, fixed: sitk.Image, step: int = 2) -> float:
    """Mean TRE in mm over the foreground of *fixed*, every *step*-th voxel along each axis."""
    points = mask_points_mm(foreground_mask(fixed), step=step)
    return float(target_registration_error(estimated, reference, points).mean())
