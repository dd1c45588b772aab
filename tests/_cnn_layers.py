"""A layer list of tests/test_parity_random_cnns.py made into layers of either framework: `nn`
is tvmfront.nn or torch.nn, whose constructors take the same arguments here. Imported by the
test and by its PyTorch side (tests/_torch_random_cnns.py), so both read a list alike.

Layers: ["conv", c_in, c_out, kernel, stride, padding, bias], ["bn", c], ["relu"],
["maxpool" | "avgpool", kernel, stride, padding], ["flatten"], ["linear", in, out]."""


def layer(nn, spec):
    kind, args = spec[0], spec[1:]
    if kind == "conv":
        c_in, c_out, kernel, stride, padding, bias = args
        return nn.Conv2d(c_in, c_out, tuple(kernel), stride=tuple(stride),
                         padding=tuple(padding), bias=bias)
    if kind in ("maxpool", "avgpool"):
        kernel, stride, padding = args
        pool = nn.MaxPool2d if kind == "maxpool" else nn.AvgPool2d
        return pool(kernel, stride=stride, padding=padding)
    return {"bn": nn.BatchNorm2d, "relu": nn.ReLU, "flatten": nn.Flatten,
            "linear": nn.Linear}[kind](*args)
