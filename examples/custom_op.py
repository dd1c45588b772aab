"""Author a new activation op (forward and gradient in TE), check it, train a model with it.

    python examples/custom_op.py
"""

import numpy as np

import tvmfront as tvf

te = tvf.te


# Softplus: log(1 + exp(x)), written stably as max(x, 0) + log1p(exp(-|x|)).
@tvf.op
def softplus(x):
    zero = te.const(0, x.dtype)
    return te.compute(x.shape, lambda *i: te.max(x(*i), zero)
                      + tvf.tirx.log1p(te.exp(-te.abs(x(*i)))), name="softplus")


@softplus.grad
def _(dy, x):
    # d/dx softplus(x) = sigmoid(x)
    return [te.compute(x.shape, lambda *i: dy(*i) * te.sigmoid(x(*i)), name="softplus_grad")]


class Softplus(tvf.nn.Module):
    def forward(self, x):
        return softplus(x)


def main():
    # 1. Eager: the op runs on numpy arrays and matches a numpy reference.
    x = np.linspace(-30, 30, 13)
    np.testing.assert_allclose(softplus(x), np.logaddexp(0, x), rtol=1e-12)
    # 2. Its gradient matches central finite differences in float64.
    assert tvf.gradcheck(softplus, [np.random.default_rng(0).standard_normal((4, 5))])
    print("softplus: forward matches numpy, gradcheck passed")

    # 3. Train a model that uses it.
    tvf.manual_seed(0)
    nn = tvf.nn
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 128), Softplus(), nn.Linear(128, 10))
    x_train, y_train, x_test, y_test = tvf.data.load_digits()
    module = tvf.compile_training(model, nn.CrossEntropyLoss(), tvf.optim.Adam(2e-3),
                                  inputs=(64, 1, 8, 8), labels=(64,))
    trainer = tvf.Trainer(module, seed=0)
    trainer.fit(x_train, y_train, epochs=10, val=(x_test, y_test))
    print(f"test_accuracy={trainer.evaluate(x_test, y_test)['accuracy']:.4f}")


if __name__ == "__main__":
    main()
