"""Run by test_threads.py in its own process (a race could segfault): one inference module
and one training module called from several Python threads at once; prints what went wrong."""

import threading

import numpy as np

import tvmfront as tvf
from tvmfront import nn

tvf.manual_seed(0)
infer = tvf.compile_inference(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
                              inputs=("batch", 8))
train = tvf.compile_training(nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4)),
                             nn.MSELoss(), tvf.optim.SGD(0.1), inputs=(16, 8), labels=(16, 4))
rng = np.random.default_rng(10)
xs = [rng.standard_normal((int(rng.integers(1, 40)), 8)).astype("float32") for _ in range(32)]
refs = [infer(x) for x in xs]
batch = rng.standard_normal((16, 8)).astype("float32"), rng.standard_normal((16, 4)).astype(
    "float32")
want_loss, want_grads = train.loss_and_grads(*batch)
problems = []


def calls(seed):
    r = np.random.default_rng(seed)
    try:
        for k in range(300):
            i = int(r.integers(0, len(xs)))
            out = infer(xs[i]) if k % 3 else infer.predict(xs[i], batch_size=7)
            if not np.array_equal(out, refs[i]):
                problems.append(f"inference output {i} differs")
            if k % 10 == 0:
                loss, grads = train.loss_and_grads(*batch)
                if loss != want_loss or any(not np.array_equal(grads[n], want_grads[n])
                                            for n in grads):
                    problems.append("loss_and_grads differs")
    except Exception as err:  # noqa: BLE001 - reported, the test fails on it
        problems.append(f"{type(err).__name__}: {str(err).splitlines()[0][:150]}")


threads = [threading.Thread(target=calls, args=(s,)) for s in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("problems:", problems[:5] if problems else "none")
