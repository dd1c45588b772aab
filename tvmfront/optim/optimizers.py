"""Named optimizers: compositions of the rules in transform.py, plus their hyperparameters."""

from .transform import add_decayed_weights, chain, scale_by_adam, scale_by_learning_rate, trace


class Optimizer:
    """A GradientTransformation with a name, a default learning rate and its hyperparameters
    (recorded in exported bundles). The learning rate is a runtime input of the compiled step;
    ``lr`` here is only the value used when the caller gives none."""

    def __init__(self, name, transform, lr, **hyperparameters):
        if not lr > 0:
            raise ValueError(f"{name}: learning rate must be positive, got {lr}")
        self.name, self.transform, self.lr = name, transform, float(lr)
        self.hyperparameters = dict(hyperparameters)

    def init(self, params):
        return self.transform.init(params)

    def update(self, grads, state, params, hyper):
        return self.transform.update(grads, state, params, hyper)

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.hyperparameters.items())
        return f"{self.name}(lr={self.lr}{', ' + args if args else ''})"


def SGD(lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0):
    """torch.optim.SGD's update rule."""
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("SGD: nesterov needs momentum > 0 and dampening == 0")
    rules = []
    if weight_decay:
        rules.append(add_decayed_weights(weight_decay))
    if momentum:
        rules.append(trace(momentum, nesterov, dampening))
    rules.append(scale_by_learning_rate())
    return Optimizer("SGD", chain(*rules), lr, momentum=momentum, nesterov=nesterov,
                     weight_decay=weight_decay, dampening=dampening)


def Adam(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
    """torch.optim.Adam's update rule (L2 weight decay added to the gradient)."""
    rules = [add_decayed_weights(weight_decay)] if weight_decay else []
    rules += [scale_by_adam(betas[0], betas[1], eps), scale_by_learning_rate()]
    return Optimizer("Adam", chain(*rules), lr, betas=list(betas), eps=eps,
                     weight_decay=weight_decay)
