"""Activity maps from an ONNX trunk run by onnxruntime (the paper's eq. (9)-(10)).

Size rule for any H x W (odd included): the normalised images are padded at
the bottom and right, by mirroring (``numpy.pad`` mode ``symmetric``), up to
the next multiple of the trunk's output stride ``s``; the trunk then sees
only sizes its TensorFlow-'SAME' / PyTorch padding handles exactly, and its
output is cropped to ``(ceil(H / s), ceil(W / s))``, aligned with the
top-left corner (output pixel ``(i, j)`` covers input pixels
``[i*s, (i+1)*s) x [j*s, (j+1)*s)``, as nearest-neighbour upsampling assumes).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import numpy as np

from medfuse.errors import FusionError, InputError
from medfuse.features.manifest import Normalisation

#: Images per onnxruntime call are limited so that one call holds at most this
#: many input pixels: a whole volume's slices in one batch would need tens of GB
#: of intermediate activations (EfficientNet-Lite0's widest one before depth 3 is
#: 96 channels at stride 2: 4 Mpixel -> ~400 MB).  The 2-D case (K sources of
#: up to 2048 x 2048) is always a single batch.
MAX_BATCH_PIXELS = 4 * 1024 * 1024


class OnnxActivityExtractor:
    """The ``ActivityExtractor`` of the core, backed by an onnxruntime session.

    Built by :func:`medfuse.features.registry.load_extractor`, which passes
    itself as ``reload``: pickling the extractor (e.g. to a Dask worker)
    pickles ``reload`` by reference with the name, depth and threads, and the
    receiving process loads it again by name (this module never imports the
    registry, so the two do not import each other).

    Attributes
    ----------
    name : str
        ``"<model>@<depth>"``, e.g. ``"efficientnet-lite0-int8@3"``.
    model, depth, stride, channels, threads
        What was loaded: registry name, depth, output stride, feature channels,
        onnxruntime intra-op threads (None = onnxruntime's default).
    sha256 : str
        Hex digest of the ONNX file, verified against the manifest when loaded (for provenance).
    """

    def __init__(self, session, *, model: str, depth: int, stride: int, channels: int,
                 normalisation: Normalisation, threads: int | None, sha256: str,
                 reload: Callable[..., OnnxActivityExtractor]):
        self._session = session
        self._reload = reload
        self._input = session.get_inputs()[0].name
        self.model = model
        self.depth = depth
        self.stride = stride
        self.channels = channels
        self.threads = threads
        self.sha256 = sha256
        self.name = f"{model}@{depth}"
        self._normalisation = normalisation

    def __repr__(self) -> str:
        return f"OnnxActivityExtractor({self.name!r}, stride={self.stride}, threads={self.threads})"

    def __reduce__(self):
        return (functools.partial(self._reload, threads=self.threads), (self.model, self.depth))

    def output_shape(self, height: int, width: int) -> tuple[int, int]:
        """``(ceil(height / stride), ceil(width / stride))``: the activity map's size."""
        return math.ceil(height / self.stride), math.ceil(width / self.stride)

    def features(self, images: np.ndarray) -> np.ndarray:
        """ReLU feature maps ``max(0, F_l(I_k))``.

        Parameters
        ----------
        images : ndarray, shape (N, H, W), float32 in [0, 1]

        Returns
        -------
        ndarray, shape (N, C, ceil(H/stride), ceil(W/stride)), float32 >= 0
        """
        images = _checked(images)
        n, height, width = images.shape
        out_h, out_w = self.output_shape(height, width)
        per_call = max(1, MAX_BATCH_PIXELS // (height * width))
        chunks = [self._run(images[i:i + per_call])[:, :, :out_h, :out_w] for i in range(0, n, per_call)]
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    def activity(self, images: np.ndarray) -> np.ndarray:
        """Channel-wise L1 norm of the ReLU features (eq. 10).

        Parameters
        ----------
        images : ndarray, shape (N, H, W), float32 in [0, 1]
            The K sources (or K*Z slices), grey; replicated to the model's 3 channels.

        Returns
        -------
        ndarray, shape (N, ceil(H/stride), ceil(W/stride)), float32 >= 0
        """
        return self.features(images).sum(axis=1, dtype=np.float32)

    def _run(self, images: np.ndarray) -> np.ndarray:
        height, width = images.shape[1:]
        pad_h = -height % self.stride
        pad_w = -width % self.stride
        if pad_h or pad_w:
            images = np.pad(images, ((0, 0), (0, pad_h), (0, pad_w)), mode="symmetric")
        batch = self._normalisation.apply(images)
        try:
            (out,) = self._session.run(None, {self._input: batch})
        except Exception as exc:  # onnxruntime raises its own exception types (e.g. out of memory)
            raise FusionError(f"CNN forward pass of {self.name} failed on {images.shape}: "
                              f"{' '.join(str(exc).split())[:200]}") from exc
        return out


def _checked(images) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim != 3 or array.shape[0] < 1 or array.shape[1] < 1 or array.shape[2] < 1:
        raise InputError(f"activity needs images of shape (N, H, W) with N, H, W >= 1, got {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"activity needs float images in [0, 1], got dtype {array.dtype}")
    array = array.astype(np.float32, copy=False)
    low, high = float(array.min()), float(array.max())
    if not (low >= 0.0 and high <= 1.0):  # also false for NaN
        raise InputError(f"activity needs images in [0, 1], got values in [{low:g}, {high:g}]")
    return array
