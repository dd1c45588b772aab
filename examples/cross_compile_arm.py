"""Train on x86, deploy to ARM: cross-compile a training and an inference build for aarch64,
carry the x86-trained weights over, export both bundles, and (where qemu is set up) run the
ARM inference under emulation to show it gives the x86 answers.

    python examples/cross_compile_arm.py --epochs 5 --out artifacts/cross_compile_arm

Exporting needs the aarch64 cross compiler and running needs qemu with an aarch64 sysroot and
the aarch64 wheels: `bash scripts/setup_arm.sh` installs all of it. On a real ARM board, copy a
bundle there, `pip install apache-tvm==0.27.0.post1 apache-tvm-ffi==0.1.14.post1 numpy
safetensors`, put tvmfront on the path and `tvmfront.load(bundle)`.
"""

import argparse
import os
import time

import numpy as np

import tvmfront as tvf
from tvmfront.testing import qemu as cross

p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--out", default="artifacts/cross_compile_arm", help="directory for both bundles")
p.add_argument("--epochs", type=int, default=5)
p.add_argument("--seed", type=int, default=0)
args = p.parse_args()
nn = tvf.nn
BATCH = 64


def build_model():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))


def elf_machine(path):
    with open(path, "rb") as f:
        head = f.read(20)
    return {183: "aarch64", 62: "x86_64"}.get(int.from_bytes(head[18:20], "little"), "other")


x_train, y_train, x_test, y_test = tvf.data.load_digits()

# 1. Train on this machine (x86).
t0 = time.perf_counter()
tvf.manual_seed(args.seed)
x86 = tvf.compile_training(build_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(lr=2e-3),
                           inputs=(BATCH, 1, 8, 8), labels=(BATCH,), target="x86")
tvf.Trainer(x86, seed=args.seed).fit(x_train, y_train, epochs=args.epochs)
x86_pred = x86.predict(x_test)
print(f"trained on x86 ({x86.manifest['target_key']}) for {args.epochs} epochs in "
      f"{time.perf_counter() - t0:.1f} s: test accuracy "
      f"{np.mean(x86_pred.argmax(1) == y_test):.4f}")

# 2. Cross-compile the same model for ARM and carry the trained weights over.
t0 = time.perf_counter()
arm_train = tvf.compile_training(build_model(), nn.CrossEntropyLoss(), tvf.optim.Adam(lr=2e-3),
                                 inputs=(BATCH, 1, 8, 8), labels=(BATCH,), target="arm")
arm_infer = tvf.compile_inference(build_model(), inputs=(BATCH, 1, 8, 8), target="arm")
for module in (arm_train, arm_infer):
    module.load_state_dict(x86.state_dict())
print(f"compiled training and inference builds for {arm_infer.manifest['target_key']} in "
      f"{time.perf_counter() - t0:.1f} s; weights copied from the x86 module")
try:
    arm_infer.predict(x_test[:1])
except tvf.TargetError as err:  # an aarch64 library cannot run on this machine
    print(f"running it here is refused: {str(err)[:110]}...")

# 3. Export both bundles (linked with aarch64-linux-gnu-g++).
os.makedirs(args.out, exist_ok=True)
paths = {}
for name, module in (("arm_training", arm_train), ("arm_inference", arm_infer)):
    paths[name] = module.export(os.path.join(args.out, name))
    so = os.path.join(paths[name], "module.so")
    print(f"exported {paths[name]}: module.so is an {elf_machine(so)} library "
          f"({os.path.getsize(so) // 1024} KiB), {sorted(os.listdir(paths[name]))}")

# 4. Run the ARM inference bundle under qemu-aarch64 with the aarch64 TVM runtime.
try:
    cross.arm_env()
except cross.ArmUnavailable as err:
    print(f"qemu run skipped: {err}")
    print("arm_matches_x86=unchecked")
    raise SystemExit(0)
outputs, report = cross.run_bundles_aarch64(
    [{"bundle": paths["arm_inference"], "op": "predict", "x": "x_test", "out": "pred"}],
    {"x_test": x_test})
arm_pred = outputs["pred"]
diff = float(np.max(np.abs(arm_pred - x86_pred)))
agree = float(np.mean(arm_pred.argmax(1) == x86_pred.argmax(1)))
matches = bool(np.allclose(arm_pred, x86_pred, rtol=1e-5, atol=1e-5))
print(f"ran {len(x_test)} test digits on {report['machine']} under qemu "
      f"({report['wall_s']} s, {report['import_s']} s of it emulated imports): "
      f"test accuracy {np.mean(arm_pred.argmax(1) == y_test):.4f}, "
      f"max |arm - x86| = {diff:.2e}, same class for {agree:.2%}")
print(f"arm_matches_x86={matches} max_abs_diff={diff:.2e}")
