"""PyTorch side of tests/test_fake_quant.py and tests/test_qat.py: runs in .venv-bench, in its
own process. argv: input .npz, mode ("ops" or "qat"), output .npz (no pickle either way).

ops: cases ``c<k>.x``, ``.scale``, ``.zp``, ``.dy`` and ``c<k>.attrs`` (JSON: qmin, qmax,
axis or null); writes ``c<k>.out`` (torch.fake_quantize_per_tensor_affine /
per_channel_affine) and ``c<k>.grad`` (its gradient for dy); with ``"learnable": true`` in
the attrs, torch._fake_quantize_learnable_per_*_affine (grad_factor 1) and also
``c<k>.grad_scale``, ``c<k>.grad_zp``.

qat: x0..x<n-1>, y0.. (training batches), x_eval, the initial parameters ``p.<name>`` and
``opt`` (JSON: lr, momentum). The model is tests/test_qat.py's conv -> relu -> pool ->
linear with PyTorch's fake quantizers placed as tvmfront's prepare_qat places them (input of
each layer: FakeQuantize with MovingAverageMinMaxObserver, quint8 [0, 255]; weights:
per-channel symmetric qint8 qparams of PerChannelMinMaxObserver on the current weight).
Writes the losses, the observers' min/max (``b.<name>``), the final parameters and the eval
output with observers disabled.
"""

import json
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.ao.quantization import (FakeQuantize, MovingAverageMinMaxObserver,
                                   PerChannelMinMaxObserver, disable_observer)


def fake_quant(x, scale, zp, qmin, qmax, axis):
    if axis is None:
        return torch.fake_quantize_per_tensor_affine(x, scale.reshape(1), zp.reshape(1), qmin,
                                                     qmax)
    return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)


def learnable_fake_quant(x, scale, zp, qmin, qmax, axis):
    if axis is None:
        return torch._fake_quantize_learnable_per_tensor_affine(x, scale, zp, qmin, qmax, 1.0)
    return torch._fake_quantize_learnable_per_channel_affine(x, scale, zp, axis, qmin, qmax, 1.0)


def run_ops(data):
    out = {}
    k = 0
    while f"c{k}.x" in data:
        attrs = json.loads(str(data[f"c{k}.attrs"]))
        x = torch.from_numpy(data[f"c{k}.x"]).requires_grad_(True)
        scale = torch.from_numpy(data[f"c{k}.scale"])
        zp = torch.from_numpy(data[f"c{k}.zp"])
        if attrs.get("learnable"):
            scale.requires_grad_(True)
            zp = zp.float().requires_grad_(True)
            y = learnable_fake_quant(x, scale, zp, attrs["qmin"], attrs["qmax"], attrs["axis"])
        else:
            y = fake_quant(x, scale, zp, attrs["qmin"], attrs["qmax"], attrs["axis"])
        y.backward(torch.from_numpy(data[f"c{k}.dy"]))
        out[f"c{k}.out"] = y.detach().numpy()
        out[f"c{k}.grad"] = x.grad.numpy()
        if attrs.get("learnable"):
            out[f"c{k}.grad_scale"] = scale.grad.numpy()
            out[f"c{k}.grad_zp"] = zp.grad.numpy()
        k += 1
    return out


def act_fake_quant():
    return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=0, quant_max=255,
                        dtype=torch.quint8, qscheme=torch.per_tensor_affine,
                        reduce_range=False, averaging_constant=0.01)


def weight_fake_quant(w):
    obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8,
                                   qscheme=torch.per_channel_symmetric, quant_min=-128,
                                   quant_max=127)
    obs(w.detach())
    scale, zp = obs.calculate_qparams()
    return torch.fake_quantize_per_channel_affine(w, scale, zp.to(torch.int32), 0, -128, 127)


class Net(torch.nn.Module):
    """tvmfront names: 0 = conv, 4 = linear (Sequential indices)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(64, 10)
        self.fq_conv = act_fake_quant()
        self.fq_fc = act_fake_quant()

    def forward(self, x):
        x = F.conv2d(self.fq_conv(x), weight_fake_quant(self.conv.weight), self.conv.bias,
                     padding=1)
        x = torch.flatten(F.max_pool2d(F.relu(x), 2), 1)
        return F.linear(self.fq_fc(x), weight_fake_quant(self.fc.weight), self.fc.bias)


NAMES = {"0.weight": "conv.weight", "0.bias": "conv.bias", "4.weight": "fc.weight",
         "4.bias": "fc.bias"}
BUFFERS = {"0.input_fake_quant": "fq_conv", "4.input_fake_quant": "fq_fc"}


def run_qat(data):
    opt = json.loads(str(data["opt"]))
    model = Net()
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, theirs in NAMES.items():
            params[theirs].copy_(torch.from_numpy(data["p." + ours]))
    optim = torch.optim.SGD(model.parameters(), lr=opt["lr"], momentum=opt["momentum"])
    losses, k = [], 0
    model.train()
    while f"x{k}" in data:
        optim.zero_grad()
        loss = F.cross_entropy(model(torch.from_numpy(data[f"x{k}"])),
                               torch.from_numpy(data[f"y{k}"]))
        loss.backward()
        optim.step()
        losses.append(loss.item())
        k += 1
    out = {"losses": np.array(losses)}
    out.update({"p." + ours: params[theirs].detach().numpy() for ours, theirs in NAMES.items()})
    for ours, theirs in BUFFERS.items():
        obs = getattr(model, theirs).activation_post_process
        out[f"b.{ours}.min_val"] = obs.min_val.numpy()
        out[f"b.{ours}.max_val"] = obs.max_val.numpy()
    model.apply(disable_observer)
    model.eval()
    with torch.no_grad():
        out["eval"] = model(torch.from_numpy(data["x_eval"])).numpy()
    return out


def main(src, mode, dst):
    data = np.load(src, allow_pickle=False)
    np.savez(dst, **(run_ops(data) if mode == "ops" else run_qat(data)))


if __name__ == "__main__":
    main(*sys.argv[1:])
