"""PyTorch side of tests/test_parity_random_cnns.py: runs in .venv-bench, in its own process.

argv: input .npz, output .npz (no pickle either way). Input: ``cases``, a JSON list of layer
lists (tests/_cnn_layers.py); for case i its state_dict as ``{i}.s.<name>``, the batch
``{i}.x`` and labels ``{i}.y``. Per case: the nn.Sequential of those layers in float64, loaded
strictly, in train mode; writes ``{i}.loss`` (cross entropy, mean) and ``{i}.g.<name>``, every
parameter's gradient.
"""

import json
import sys

import numpy as np
import torch
from torch import nn

from _cnn_layers import layer


def main(src, dst):
    torch.set_num_threads(1)
    with np.load(src, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    out = {}
    for i, layers in enumerate(json.loads(str(data["cases"]))):
        model = nn.Sequential(*(layer(nn, spec) for spec in layers)).double().train()
        prefix = f"{i}.s."
        state = {k[len(prefix):]: torch.from_numpy(v) for k, v in data.items()
                 if k.startswith(prefix)}
        model.load_state_dict({k: v.double() if v.is_floating_point() else v
                               for k, v in state.items()}, strict=True)
        x = torch.from_numpy(data[f"{i}.x"]).double()
        loss = nn.functional.cross_entropy(model(x), torch.from_numpy(data[f"{i}.y"]).long())
        loss.backward()
        out[f"{i}.loss"] = np.array(loss.item())
        for name, p in model.named_parameters():
            out[f"{i}.g.{name}"] = p.grad.numpy()
    np.savez(dst, **out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
