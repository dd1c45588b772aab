"""Train a small ResNet (three stages of residual blocks with BatchNorm, global average
pooling) on scikit-learn's digits upsampled to 32x32, with random-shift augmentation;
evaluate in eval mode, export the bundle, reload it and evaluate it again.

    python examples/resnet_digits.py --out artifacts/resnet_digits
    tvmfront tune examples/resnet_digits.py --budget 64   # tune its modules (tvmfront_modules)
"""

import os
import time

import numpy as np

import tvmfront as tvf
from _common import parse_args, tuning_modules, use_every_core

use_every_core()  # 575 training samples/s with 2 threads, 266 with 1 (idle 2-core AVX2)

nn, ops = tvf.nn, tvf.ops
X_SHAPE = (1, 32, 32)
BATCH = 64  # tuning_modules and bench/peers.py compile the train step at this batch
WIDTHS = (16, 32, 64)  # channels of the three stages, at 32x32, 16x16 and 8x8
LR, WEIGHT_DECAY, WARMUP_EPOCHS = 6e-3, 5e-4, 1
MAX_SHIFT = 2  # pixels at 32x32: half a pixel of the original 8x8 image


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input, then ReLU (ResNet's basic block). Where the
    stride or the width changes, the input goes through a 1x1 convolution and BN first."""

    def __init__(self, cin, cout, stride=1, dtype="float32"):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False, dtype=dtype)
        self.bn1 = nn.BatchNorm2d(cout, dtype=dtype)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False, dtype=dtype)
        self.bn2 = nn.BatchNorm2d(cout, dtype=dtype)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False, dtype=dtype),
                nn.BatchNorm2d(cout, dtype=dtype))

    def forward(self, x):
        h = ops.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return ops.relu(h + (x if self.shortcut is None else self.shortcut(x)))


class ResNet(nn.Module):
    """stem conv3x3-BN-ReLU, then stages of `blocks` BasicBlocks at strides 1, 2, 2, global
    average pooling and a linear head. PyTorch's names: the same model written with
    torch.nn (tests/_torch_resnet.py) loads this state_dict as it is."""

    def __init__(self, widths=WIDTHS, blocks=1, classes=10, in_channels=1, dtype="float32"):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False, dtype=dtype),
            nn.BatchNorm2d(widths[0], dtype=dtype), nn.ReLU())
        layers, cin = [], widths[0]
        for i, width in enumerate(widths):
            for b in range(blocks):
                layers.append(BasicBlock(cin, width, stride=2 if i and not b else 1, dtype=dtype))
                cin = width
        self.stages = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, classes, dtype=dtype)

    def forward(self, x):
        h = self.stages(self.stem(x))         # [N, 1, 32, 32] -> [N, 64, 8, 8]
        return self.fc(ops.mean(h, axis=(2, 3)))  # global average pooling -> [N, 64] -> [N, 10]


def make_model():
    return ResNet()


def make_optimizer():
    return tvf.optim.AdamW(lr=LR, weight_decay=WEIGHT_DECAY)


def lr_schedule(epochs, steps_per_epoch):
    """Linear warmup over the first epoch, then cosine decay to 0 at the last step."""
    warm = WARMUP_EPOCHS * steps_per_epoch
    total = max(epochs * steps_per_epoch - warm, 1)
    return tvf.optim.schedules.warmup(warm, tvf.optim.schedules.cosine(LR, total))


def random_shift(x, rng, max_shift=MAX_SHIFT):
    """Each image moved by its own (dy, dx), uniform in [-max_shift, max_shift], zero-filled:
    x [N, C, H, W] -> [N, C, H, W]. Trainer.fit(augment=...) calls it on each batch."""
    n, _, h, w = x.shape
    s = max_shift
    padded = np.pad(x, ((0, 0), (0, 0), (s, s), (s, s)))
    dy, dx = rng.integers(0, 2 * s + 1, (2, n))  # the window's corner in the padded image
    rows = dy[:, None] + np.arange(h)  # [N, H]
    cols = dx[:, None] + np.arange(w)  # [N, W]
    return padded[np.arange(n)[:, None, None, None], np.arange(x.shape[1])[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


def tvmfront_modules(target="x86"):
    """What `tvmfront tune` tunes: the train step at batch 64, inference at batch 1 and 64."""
    return tuning_modules(make_model, make_optimizer(), X_SHAPE, target)


def main():
    args = parse_args(__doc__, "artifacts/resnet_digits", epochs=20)
    t0 = time.perf_counter()
    tvf.manual_seed(args.seed)
    x_train, y_train, x_test, y_test = tvf.data.load_digits()  # the fixed split
    x_train, x_test = tvf.data.upsample(x_train, 4), tvf.data.upsample(x_test, 4)
    # Any batch size ("batch"): every epoch trains on all 1438 images, the last 30 too.
    module = tvf.compile_training(make_model(), nn.CrossEntropyLoss(), make_optimizer(),
                                  inputs=("batch", *X_SHAPE), labels=("batch",),
                                  target=args.target)
    info = module.build_info
    print(f"compiled train step for {args.target} in {time.perf_counter() - t0:.1f} s "
          f"(compile cache: {info['cache']}; {info['tuned_kernels']} kernels from tuning records)")
    schedule = lr_schedule(args.epochs, -(-len(y_train) // BATCH))
    trainer = tvf.Trainer(module, seed=args.seed, lr_schedule=schedule)
    trainer.fit(x_train, y_train, epochs=args.epochs, val=(x_test, y_test),
                augment=random_shift, batch_size=BATCH)
    # predict runs in eval mode: BatchNorm normalises with its running statistics
    logits = module.predict(x_test)
    path = module.export(args.out)
    print(f"exported bundle to {path}: {sorted(os.listdir(path))}")
    reloaded = tvf.load(path).predict(x_test)
    if not np.array_equal(reloaded, logits):
        raise SystemExit("the reloaded bundle's eval-mode outputs differ from the trained module's")
    print(f"reloaded bundle: the same eval-mode outputs on the {len(x_test)} test images; "
          f"total time {time.perf_counter() - t0:.1f} s")
    print(f"test_accuracy={np.mean(reloaded.argmax(axis=1) == y_test):.4f}")


if __name__ == "__main__":
    main()
