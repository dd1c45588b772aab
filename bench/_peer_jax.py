"""JAX side of bench/peers.py: runs in .venv-bench, in its own process (CPU backend).

Sections (spec["section"]): train (one jax.jit of jax.value_and_grad + a hand-written SGD
momentum / Adam update, no optax), infer (jax.jit of the forward), transformer and resnet
(issue 11; models in _jax_models.py; the decode step updates a preallocated cache with
lax.dynamic_update_slice, caches and train state donated). Prints one JSON line
{"rows": [...], "info": {...}}. Calls take numpy inputs and return a Python float / numpy
array (block_until_ready through the conversion), as tvmfront's module.step / module(x) do.
"""

import functools
import os
import sys
import time

from _timing import emit, first_and_median, guarded, median_seconds, read_spec

SPEC = read_spec()
if SPEC.get("threads") == 1:  # before jax initialises its CPU client
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_cpu_multi_thread_eigen=false"
                               " intra_op_parallelism_threads=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _jax_models as jm  # noqa: E402
from _workloads import data, decode_position, resnet_params, transformer_params  # noqa: E402

NUM_CLASSES = 10


# ---- the models of examples/mlp_digits.py and examples/lenet_digits.py, as pure functions ---
def _uniform(key, shape, fan_in):
    bound = 1.0 / np.sqrt(fan_in)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def _linear(key, n_in, n_out):
    k1, k2 = jax.random.split(key)
    return [_uniform(k1, (n_out, n_in), n_in), _uniform(k2, (n_out,), n_in)]


def _conv(key, c_in, c_out, k):
    k1, k2 = jax.random.split(key)
    fan_in = c_in * k * k
    return [_uniform(k1, (c_out, c_in, k, k), fan_in), _uniform(k2, (c_out,), fan_in)]


def _conv2d(x, w, b, padding):  # NCHW, OIHW
    y = jax.lax.conv_general_dilated(x, w, (1, 1), [(padding, padding)] * 2,
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y + b[None, :, None, None]


def _max_pool2(x):
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")


def mlp_init(key):
    ks = jax.random.split(key, 3)
    return _linear(ks[0], 64, 256) + _linear(ks[1], 256, 256) + _linear(ks[2], 256, 10)


def mlp_apply(p, x):
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ p[0].T + p[1])
    x = jax.nn.relu(x @ p[2].T + p[3])
    return x @ p[4].T + p[5]


def lenet_init(key):
    ks = jax.random.split(key, 5)
    return (_conv(ks[0], 1, 6, 5) + _conv(ks[1], 6, 16, 5) + _linear(ks[2], 64, 120)
            + _linear(ks[3], 120, 84) + _linear(ks[4], 84, 10))


def lenet_apply(p, x):
    x = _max_pool2(jax.nn.relu(_conv2d(x, p[0], p[1], 2)))    # 1x16x16 -> 6x8x8
    x = _max_pool2(jax.nn.relu(_conv2d(x, p[2], p[3], 0)))    # -> 16x4x4 -> 16x2x2
    x = x.reshape(x.shape[0], -1)
    x = jax.nn.relu(x @ p[4].T + p[5])
    x = jax.nn.relu(x @ p[6].T + p[7])
    return x @ p[8].T + p[9]


MODELS = {"mlp": (mlp_init, mlp_apply, (1, 8, 8)), "lenet": (lenet_init, lenet_apply, (1, 16, 16))}


def cross_entropy(logits, y):
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))


# ---- optimizers, written out (PyTorch's update rules) ---------------------------------------
def sgd_init(params):
    return [jnp.zeros_like(p) for p in params]


def sgd_update(params, grads, state, lr, t, hp):
    # buf = momentum * buf + g; p -= lr * buf  (torch.optim.SGD, dampening 0)
    bufs = [hp["momentum"] * b + g for b, g in zip(state, grads)]
    return [p - lr * b for p, b in zip(params, bufs)], bufs


def adam_init(params):
    return [jnp.zeros_like(p) for p in params] + [jnp.zeros_like(p) for p in params]


def adam_update(params, grads, state, lr, t, hp):
    b1, b2, eps = hp["b1"], hp["b2"], hp["eps"]
    n = len(params)
    m = [b1 * mi + (1 - b1) * g for mi, g in zip(state[:n], grads)]
    v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(state[n:], grads)]
    c1, c2 = 1 - b1 ** t, 1 - b2 ** t
    new = [p - lr * (mi / c1) / (jnp.sqrt(vi / c2) + eps) for p, mi, vi in zip(params, m, v)]
    return new, m + v


OPTIMIZERS = {"sgd": (sgd_init, sgd_update), "adam": (adam_init, adam_update)}


def _row(section, case, contender, **kw):
    return dict(section=section, case=case, contender=contender, **kw)


def section_train(spec):
    rows = []
    rng = np.random.default_rng(0)
    batch = spec["batch"]
    for model_name in spec["models"]:
        init, apply, x_shape = MODELS[model_name]
        x = rng.standard_normal((batch, *x_shape)).astype("float32")
        y = rng.integers(0, NUM_CLASSES, batch).astype("int32")
        for opt_name in spec["optimizers"]:
            hp = spec["hyper"][opt_name]
            opt_init, opt_update = OPTIMIZERS[opt_name]

            def run(apply=apply, init=init, opt_init=opt_init, opt_update=opt_update, hp=hp,
                    x=x, y=y):
                def loss_fn(params, x, y):
                    return cross_entropy(apply(params, x), y)

                @jax.jit
                def step(params, state, x, y, lr, t):
                    loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
                    params, state = opt_update(params, grads, state, lr, t, hp)
                    return loss, params, state

                holder = {"params": init(jax.random.PRNGKey(0))}
                holder["state"] = opt_init(holder["params"])
                holder["t"] = 0
                lr = np.float32(hp["lr"])

                def call():
                    holder["t"] += 1
                    loss, holder["params"], holder["state"] = step(
                        holder["params"], holder["state"], x, y, lr, np.float32(holder["t"]))
                    return float(loss)

                t0 = time.perf_counter()
                call()  # jit compiles here
                first = time.perf_counter() - t0
                return {"seconds": median_seconds(call, spec), "compile_s": first}

            rows.append(dict(guarded(run), section="train", case=f"{model_name} {opt_name}",
                             contender="JAX jit"))
    return rows


def section_infer(spec):
    rows = []
    rng = np.random.default_rng(0)
    for model_name in spec["models"]:
        init, apply, x_shape = MODELS[model_name]
        params = init(jax.random.PRNGKey(0))
        fwd = jax.jit(apply)
        for batch in spec["batches"]:
            x = rng.standard_normal((batch, *x_shape)).astype("float32")

            def run(x=x):
                def call():
                    return np.asarray(fwd(params, x))

                t0 = time.perf_counter()
                call()
                first = time.perf_counter() - t0
                return {"seconds": median_seconds(call, spec), "compile_s": first}

            rows.append(dict(guarded(run), section="infer", case=f"{model_name} b{batch}",
                             contender="JAX jit"))
    return rows


# ---- transformer and resnet (issue 11) ------------------------------------------------------
def _checked(params, want):
    if jm.param_count(params) != want:
        raise ValueError(f"the JAX model has {jm.param_count(params)} parameters, "
                         f"tvmfront's {want}")
    return params


def _train_call(loss_fn, params, aux, o, x, y):
    """A call running one jit'd step (value_and_grad, clipping, the optimizer), parameters,
    optimizer state and `aux` (BatchNorm statistics, or None) donated and carried over."""
    @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
    def step(params, state, aux, x, y, t):
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, aux, x, y)
        params, state = jm.adam_update(params, grads, state, t, o)
        return loss, params, state, aux

    held = {"params": params, "state": jm.adam_init(params), "aux": aux, "t": 0}

    def call():
        held["t"] += 1
        loss, held["params"], held["state"], held["aux"] = step(
            held["params"], held["state"], held["aux"], x, y, np.float32(held["t"]))
        return float(loss)

    return call


def section_transformer(spec):
    cfg = spec["config"]
    m, batch, nhead = cfg["model"], cfg["batch"], cfg["model"]["nhead"]
    arrays = data("transformer", cfg, "int32")
    params = lambda: _checked(jm.causal_lm_init(jax.random.PRNGKey(0), **m),  # noqa: E731
                              transformer_params(cfg))
    x, y = arrays["x"], arrays["y"]
    rows = []

    def train():
        def loss_fn(p, aux, x, y):
            return jm.cross_entropy(jm.causal_lm_apply(p, x, nhead), y), aux

        return first_and_median(_train_call(loss_fn, params(), None, cfg["optimizer"], x, y),
                                 spec)

    cases = [(f"train b{batch}", train)]
    fwd = jax.jit(lambda p, x: jm.causal_lm_apply(p, x, nhead))
    for b, xb in arrays["infer"].items():
        def infer(xb=xb):
            p = params()
            return first_and_median(lambda: np.asarray(fwd(p, xb)), spec)

        cases.append((f"infer b{b}", infer))
    pos = decode_position(cfg)

    def decode():
        p = params()
        shape = (m["num_layers"], 1, nhead, m["context"], m["d_model"] // nhead)
        k1, k2 = jax.random.split(jax.random.PRNGKey(1))
        held = {"k": jax.random.normal(k1, shape), "v": jax.random.normal(k2, shape)}
        step = jax.jit(lambda p, t, i, k, v: jm.causal_lm_decode(p, t, i, k, v, nhead),
                       donate_argnums=(3, 4))
        token, at = np.ones((1, 1), "int32"), np.int32(pos)

        def call():
            logits, held["k"], held["v"] = step(p, token, at, held["k"], held["v"])
            return np.asarray(logits)

        return first_and_median(call, spec)

    cases.append((f"decode b1 @{pos}", decode))
    for case, run in cases:
        rows.append(dict(guarded(run), section="transformer", case=case, contender="JAX jit"))
    return rows


def section_resnet(spec):
    cfg = spec["config"]
    arrays = data("resnet", cfg, "int32")
    x, y = arrays["x"], arrays["y"]

    def init():
        params, stats = jm.resnet_init(jax.random.PRNGKey(0), cfg)
        return _checked(params, resnet_params(cfg)), stats

    def train():
        def loss_fn(p, stats, x, y):
            logits, stats = jm.resnet_apply(p, stats, x, cfg, train=True)
            return jm.cross_entropy(logits, y), stats

        return first_and_median(_train_call(loss_fn, *init(), cfg["optimizer"], x, y), spec)

    rows = [dict(guarded(train), section="resnet", case=f"train b{cfg['batch']}",
                 contender="JAX jit")]
    fwd = jax.jit(lambda p, s, x: jm.resnet_apply(p, s, x, cfg, train=False)[0])
    for b, xb in arrays["infer"].items():
        def infer(xb=xb):
            p, s = init()
            return first_and_median(lambda: np.asarray(fwd(p, s, xb)), spec)

        rows.append(dict(guarded(infer), section="resnet", case=f"infer b{b}",
                         contender="JAX jit"))
    return rows


SECTIONS = {"train": section_train, "infer": section_infer, "transformer": section_transformer,
            "resnet": section_resnet}


def main():
    rows = SECTIONS[SPEC["section"]](SPEC)
    emit({"rows": rows, "info": {"jax": jax.__version__, "devices": str(jax.devices())}})


if __name__ == "__main__":
    sys.exit(main())
