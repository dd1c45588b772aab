"""Layers built from tvmfront ops."""

import math

import numpy as np

from .._checks import is_whole
from .. import ops
from ..ops import batch_stats, norm
from ..ops.conv import _pair
from ..op import deriving
from ..ops._dims import is_static, same, show
from ..tensor import Tensor
from . import init
from .module import Module, Parameter


def _float_dtype_of(x):
    """x's dtype where a float (a parameterless norm's constants take it), else float32 (the
    op then names the wrong input)."""
    dtype = str(np.dtype(x.dtype)) if not isinstance(x.dtype, str) else x.dtype
    return dtype if dtype in init.PARAMETER_DTYPES else "float32"


def sizes(layer, **counts):
    """The counts (channels, features, heads, ...) of `layer`'s constructor as ints, each a
    TypeError unless an int (numpy's too; not a bool or a float) and a ValueError below 1: a
    Linear(0, 10) divided by zero in its initialisation, and a float reached a raw error."""
    out = []
    for what, value in counts.items():
        if not is_whole(value):
            raise TypeError(f"{layer}: {what} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{layer}: {what} must be at least 1, got {value}")
        out.append(int(value))
    return out if len(out) > 1 else out[0]


class Linear(Module):
    """y = x @ W^T + b, W: [out, in], over the last axis of x [..., in] (as PyTorch);
    Kaiming-uniform init as in PyTorch."""

    def __init__(self, in_features, out_features, bias=True, *, dtype="float32"):
        super().__init__()
        dtype = init.float_dtype(dtype, "Linear")
        in_features, out_features = sizes("Linear", in_features=in_features,
                                          out_features=out_features)
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.kaiming_uniform((out_features, in_features), dtype=dtype))
        self.bias = Parameter(init.bias_uniform((out_features,), in_features, dtype)) if bias else None

    def forward(self, x):
        shape = tuple(x.shape)
        if not shape or not isinstance(shape[-1], int) or shape[-1] != self.in_features:
            raise ValueError(f"Linear({self.in_features}, {self.out_features}): expected input "
                             f"[..., {self.in_features}], got shape {show(shape)}")
        y = ops.dense(x, self.weight)  # [..., in] -> [..., out]
        return ops.bias_add(y, self.bias, axis=-1) if self.bias is not None else y

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}, bias={self.bias is not None}"


class Conv2d(Module):
    """NCHW convolution, weight [out, in, k, k]; Kaiming-uniform init as in PyTorch.
    dilation and groups keep PyTorch's places; only 1 is implemented."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 groups=1, bias=True, padding_mode="zeros", *, dtype="float32"):
        super().__init__()
        init.torch_only("Conv2d", dilation=(dilation, [1, (1, 1)]), groups=(groups, [1]),
                        padding_mode=(padding_mode, ["zeros"]))
        dtype = init.float_dtype(dtype, "Conv2d")
        in_channels, out_channels = sizes("Conv2d", in_channels=in_channels,
                                          out_channels=out_channels)
        k = _pair(kernel_size, "kernel_size", "Conv2d", 1)
        _pair(stride, "stride", "Conv2d", 1)
        _pair(padding, "padding", "Conv2d", 0)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, k
        self.stride, self.padding = stride, padding
        self.weight = Parameter(init.kaiming_uniform((out_channels, in_channels, *k), dtype=dtype))
        fan_in = in_channels * math.prod(k)
        self.bias = Parameter(init.bias_uniform((out_channels,), fan_in, dtype)) if bias else None

    def forward(self, x):
        stride = self.stride
        if self.training and self._subsamples():
            # A strided 1x1 conv reads only x[..., ::s, ::s]. In training its d/dx is then
            # the small dx of a stride-1 conv and strided_slice's zero interleave, which
            # fuses into the kernel that consumes dx (a residual add), instead of a dx of
            # x's full size that is 3/4 zeros written out and read back at stride 2 (ResNet's
            # train step: 28.37 -> 27.72 ms). In eval mode the one strided conv is cheaper.
            s = _pair(stride)
            x = ops.strided_slice(x, slices=((None,) * 3, (None,) * 3, (0, None, s[0]),
                                             (0, None, s[1])))
            stride = 1
        y = ops.conv2d(x, self.weight, stride=stride, padding=self.padding)
        return ops.bias_add(y, self.bias, axis=1) if self.bias is not None else y

    def _subsamples(self):
        # (a stride below 1 goes to ops.conv2d, which names it)
        stride = _pair(self.stride)
        return self.kernel_size == (1, 1) and _pair(self.padding) == (0, 0) and \
            min(stride) >= 1 and stride != (1, 1)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


class _Pool(Module):
    op = None

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        name = type(self).__name__
        _pair(kernel_size, "kernel_size", name, 1)
        if stride is not None:
            _pair(stride, "stride", name, 1)
        _pair(padding, "padding", name, 0)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return type(self).op(x, kernel=self.kernel_size, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool):
    op = ops.max_pool2d


class AvgPool2d(_Pool):
    op = ops.avg_pool2d


class Flatten(Module):
    """Axes start_dim to end_dim (negative: from the end) merged into one, as torch.nn.Flatten:
    by default [N, ...] -> [N, prod(...)]."""

    def __init__(self, start_dim=1, end_dim=-1):
        super().__init__()
        for what, v in (("start_dim", start_dim), ("end_dim", end_dim)):
            if not is_whole(v):
                raise TypeError(f"Flatten: {what} must be an int, got {v!r}")
        self.start_dim, self.end_dim = int(start_dim), int(end_dim)

    def forward(self, x):
        shape = list(x.shape)
        start, end = self.start_dim, self.end_dim
        if not (-len(shape) <= start < len(shape) and -len(shape) <= end < len(shape)):
            raise ValueError(f"Flatten({start}, {end}): dimension out of range for an input "
                             f"of shape {show(shape)}")
        start, end = start % len(shape), end % len(shape)
        if start > end:
            raise ValueError(f"Flatten({self.start_dim}, {self.end_dim}): start_dim comes after "
                             f"end_dim for an input of shape {show(shape)}")
        if (start, end) == (1, len(shape) - 1):
            return ops.flatten(x)
        return ops.reshape(x, shape=(*shape[:start], -1, *shape[end + 1:]))

    def extra_repr(self):
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class _Activation(Module):
    op = None

    def __init__(self, inplace=False):
        # PyTorch's inplace overwrites the input; tvmfront's ops never write their inputs, so
        # it changes nothing here (the output is the same)
        super().__init__()
        self.inplace = bool(inplace)

    def forward(self, x):
        return type(self).op(x)


class ReLU(_Activation):
    op = ops.relu


class Sigmoid(_Activation):
    op = ops.sigmoid


class Tanh(_Activation):
    op = ops.tanh


class Sequential(Module):
    """Runs its children in order; they are named '0', '1', ..."""

    def __init__(self, *layers):
        super().__init__()
        for i, layer in enumerate(layers):
            if not isinstance(layer, Module):
                # dropped before: a forgotten call (nn.ReLU), an op or a string trained a
                # model without the layer
                hint = (" (a class: call it, e.g. nn.ReLU())" if isinstance(layer, type) else
                        " (an op: wrap it in a Module whose forward calls it)"
                        if callable(layer) else "")
                raise TypeError(f"Sequential: layer {i} is a {type(layer).__name__} "
                                f"{layer!r}, not a Module instance{hint}")
            setattr(self, str(i), layer)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def forward(self, x):
        for layer in self._modules.values():
            x = layer(x)
        return x


class GELU(Module):
    """x * Phi(x); approximate="tanh" for PyTorch's tanh form (nn.GELU(approximate=...))."""

    def __init__(self, approximate="none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return ops.gelu(x, approximate=self.approximate)


class LayerNorm(Module):
    """Normalise over the last dims, of shape `normalized_shape` (an int: the last axis; a
    tuple: the last len(tuple) axes), with affine weight and bias of that shape (PyTorch's
    layout); bias=False leaves the bias out, as PyTorch's LayerNorm(bias=False)."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True, *,
                 dtype="float32"):
        super().__init__()
        dtype = init.float_dtype(dtype, "LayerNorm")
        shape = ((normalized_shape,) if not isinstance(normalized_shape, (tuple, list))
                 else tuple(normalized_shape))
        if not shape:
            raise ValueError("LayerNorm: normalized_shape must name at least one axis, got ()")
        shape = [sizes("LayerNorm", normalized_shape=d) for d in shape]
        self.normalized_shape, self.eps = tuple(shape), eps
        self.elementwise_affine = affine = bool(elementwise_affine)
        self.weight = Parameter(np.ones(self.normalized_shape, dtype)) if affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, dtype)) if affine and bias \
            else None

    def forward(self, x):
        # a missing weight or bias is a constant (no gradient), as PyTorch's None, of the
        # parameters' dtype (the input's without parameters: a half() model's stays float16)
        dtype = self.weight.data.dtype if self.weight is not None else _float_dtype_of(x)
        weight = self.weight if self.weight is not None else np.ones(self.normalized_shape, dtype)
        bias = self.bias if self.bias is not None else np.zeros(self.normalized_shape, dtype)
        return ops.layer_norm(x, weight, bias, eps=self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}"


class GroupNorm(Module):
    """NCHW group normalisation with per-channel affine weight and bias."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, dtype="float32"):
        super().__init__()
        dtype = init.float_dtype(dtype, "GroupNorm")
        num_groups, num_channels = sizes("GroupNorm", num_groups=num_groups,
                                         num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels do not split into "
                             f"{num_groups} groups")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.affine = bool(affine)
        self.weight = Parameter(np.ones(num_channels, dtype)) if self.affine else None
        self.bias = Parameter(np.zeros(num_channels, dtype)) if self.affine else None

    def forward(self, x):
        if not self.affine:  # constants: no gradient, as PyTorch's affine=False
            ones = np.ones(self.num_channels, _float_dtype_of(x))
            return ops.group_norm(x, ones, ones * 0, groups=self.num_groups, eps=self.eps)
        return ops.group_norm(x, self.weight, self.bias, groups=self.num_groups, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class _BatchNorm(Module):
    """Batch normalisation over axis 1 with PyTorch's semantics. In training mode it
    normalises with the batch's statistics (biased variance) and, with track_running_stats,
    updates the buffers running_mean, running_var (the unbiased batch variance, n / (n - 1)
    times the biased one) and num_batches_tracked:
    running = (1 - momentum) * running + momentum * batch statistic, momentum=None being the
    cumulative average (momentum = 1 / num_batches_tracked). In eval mode it normalises with
    the running statistics, each sample on its own. track_running_stats=False keeps no
    buffers and uses the batch's statistics in both modes (as PyTorch does)."""

    ranks = ()

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype="float32"):
        super().__init__()
        dtype = init.float_dtype(dtype, type(self).__name__)
        num_features = sizes(type(self).__name__, num_features=num_features)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        if affine:
            self.weight = Parameter(np.ones(num_features, dtype))
            self.bias = Parameter(np.zeros(num_features, dtype))
        else:
            # constants, not parameters: normalisation without a learned scale and shift
            self.weight, self.bias = np.ones(num_features, dtype), np.zeros(num_features, dtype)
        if track_running_stats:
            self.register_buffer("running_mean", np.zeros(num_features, dtype))
            self.register_buffer("running_var", np.ones(num_features, dtype))
            self.register_buffer("num_batches_tracked", np.zeros((), "int64"))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        shape = tuple(x.shape)
        if len(shape) not in self.ranks or not same(shape[1], self.num_features):
            raise ValueError(f"{type(self).__name__}({self.num_features}): expected input of rank "
                             f"{' or '.join(map(str, self.ranks))} with {self.num_features} "
                             f"channels on axis 1, got shape {tuple(show(shape))}")
        x4 = x if len(shape) == 4 else ops.reshape(x, shape=(*shape, 1, 1)[:4])
        if not (self.training or not self.track_running_stats):
            y = batch_stats.batch_norm_eval(x4, self.running_mean, self.running_var,
                                            self.weight, self.bias, eps=self.eps)
        else:
            # A symbolic batch has no size to check while tracing: a compiled step given a
            # single value per channel (where PyTorch raises) normalises it to beta
            # (variance 0) and updates running_var with a variance of 0.
            if self.training and is_static(shape) and math.prod(shape) // shape[1] < 2:
                raise ValueError(f"{type(self).__name__}: expected more than 1 value per channel "
                                 f"when training, got input shape {shape}")
            y = self._batch_normalize(x4)
        return y if len(shape) == 4 else ops.reshape(y, shape=shape)

    def _batch_normalize(self, x4):
        """ops.batch_norm's result as three ops (ops/norm.py says why): the moments, read by
        the running statistics too, the per-channel coefficients, the normalisation."""
        moments = norm.bn_moments(x4, one_pass=not deriving())
        coef = norm.bn_coefficients(moments, self.weight, self.bias, eps=self.eps)
        if self.training and self.track_running_stats:
            self._update_running_stats(x4, moments)
        return norm.bn_apply(x4, coef)

    def _update_running_stats(self, x4, moments):
        # statistics feed buffers only: no gradient flows through them
        xd, md = _detached(x4), _detached(moments)
        self.num_batches_tracked = batch_stats.increment(self.num_batches_tracked)
        if self.momentum is None:
            factor = batch_stats.cumulative_factor(self.num_batches_tracked, dtype=xd.dtype)
        else:
            factor = batch_stats.momentum_factor(self.running_mean, momentum=float(self.momentum))
        self.running_mean = batch_stats.running_mean_update(md, self.running_mean, factor)
        self.running_var = batch_stats.running_var_update(xd, md, self.running_var, factor)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


def _detached(x):
    return Tensor(x.expr) if isinstance(x, Tensor) else x


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of [N, C] or [N, C, L] (statistics over N, and L)."""

    ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation of NCHW [N, C, H, W] (statistics over N, H, W)."""

    ranks = (4,)


class SelfAttention(Module):
    """Multi-head scaled dot-product self-attention over x [B, T, D] (no mask, no dropout)."""

    def __init__(self, dim, heads=1, dtype="float32"):
        super().__init__()
        dim, heads = sizes("SelfAttention", dim=dim, heads=heads)
        if dim % heads:
            raise ValueError(f"SelfAttention: dim {dim} is not divisible by {heads} heads")
        self.dim, self.heads = dim, heads
        self.qkv = Linear(dim, 3 * dim, dtype=dtype)
        self.out = Linear(dim, dim, dtype=dtype)

    def forward(self, x):
        if len(x.shape) != 3 or x.shape[2] != self.dim:
            raise ValueError(f"SelfAttention({self.dim}): expected x [B, T, {self.dim}], got "
                             f"shape {show(tuple(x.shape))}")
        b, t, d = x.shape
        h, hd = self.heads, d // self.heads
        if not is_static((b, t)):
            return self._any_length(x, b, t, d, h, hd)
        qkv = ops.reshape(self.qkv(ops.reshape(x, shape=(b * t, d))), shape=(b, t, 3, h, hd))
        qkv = ops.transpose(qkv, axes=(2, 0, 3, 1, 4))            # [3, B, H, T, hd]
        q, k, v = (ops.reshape(_select(qkv, i), shape=(b * h, t, hd)) for i in range(3))
        scores = ops.batch_matmul(q, k, transpose_b=True)                 # [B*H, T, T]
        attn = ops.softmax_last(ops.mul_scalar(scores, value=1.0 / math.sqrt(hd)))
        ctx = ops.batch_matmul(attn, v)                                    # [B*H, T, hd]
        ctx = ops.transpose(ops.reshape(ctx, shape=(b, h, t, hd)), axes=(0, 2, 1, 3))
        return ops.reshape(self.out(ops.reshape(ctx, shape=(b * t, d))), shape=(b, t, d))

    def _any_length(self, x, b, t, d, h, hd):
        # A symbolic B or T stays a dimension of its own (never B*T or B*H, see
        # MultiheadAttention._project): [B, T, 3D] -> [3, B, H, T, hd], 4-D batched matmuls.
        qkv = ops.transpose(ops.reshape(self.qkv(x), shape=(b, t, 3, h, hd)), axes=(2, 0, 3, 1, 4))
        q, k, v = (_select(qkv, i) for i in range(3))                      # [B, H, T, hd]
        scores = ops.batch_matmul(q, k, transpose_b=True)                  # [B, H, T, T]
        attn = ops.softmax_last(ops.mul_scalar(scores, value=1.0 / math.sqrt(hd)))
        ctx = ops.transpose(ops.batch_matmul(attn, v), axes=(0, 2, 1, 3))  # [B, T, H, hd]
        return self.out(ops.reshape(ctx, shape=(b, t, d)))

    def extra_repr(self):
        return f"dim={self.dim}, heads={self.heads}"


def _select(x, i):
    """x[i] along the first axis, as a reshape of a one-row slice."""
    return ops.reshape(ops.slice_first(x, index=i), shape=tuple(x.shape[1:]))


class Embedding(Module):
    """Lookup table: ids [...] (int32 or int64) -> [..., embedding_dim], weight
    [num_embeddings, embedding_dim] drawn from N(0, 1), as torch.nn.Embedding. The row
    `padding_idx` (negative counts from the end) starts at zero and receives no gradient.
    Out-of-range ids: a ValueError eagerly, clamped into range in compiled code
    (tvmfront/ops/index.py)."""

    def __init__(self, num_embeddings, embedding_dim, padding_idx=None, max_norm=None,
                 norm_type=2.0, scale_grad_by_freq=False, sparse=False, *, dtype="float32"):
        super().__init__()
        init.torch_only("Embedding", max_norm=(max_norm, [None]),
                        scale_grad_by_freq=(scale_grad_by_freq, [False]),
                        sparse=(sparse, [False]))
        dtype = init.float_dtype(dtype, "Embedding")
        num_embeddings, embedding_dim = sizes("Embedding", num_embeddings=num_embeddings,
                                              embedding_dim=embedding_dim)
        if padding_idx is not None:
            if not is_whole(padding_idx):
                raise TypeError(f"Embedding: padding_idx must be an int or None, got "
                                f"{padding_idx!r}")
            if not -num_embeddings <= padding_idx < num_embeddings:
                raise ValueError(f"Embedding: padding_idx {padding_idx} out of range for "
                                 f"{num_embeddings} embeddings")
            padding_idx %= num_embeddings
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        weight = init.normal((num_embeddings, embedding_dim), dtype=dtype)
        if padding_idx is not None:
            weight[padding_idx] = 0
        self.weight = Parameter(weight)

    def forward(self, ids):
        return ops.embedding(self.weight, ids, padding_idx=self.padding_idx)

    def extra_repr(self):
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"


class SiLU(Module):
    def forward(self, x):
        return ops.silu(x)
