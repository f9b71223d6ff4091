"""Peer libraries on the same model, batch and budget: foolbox 3 (JAX backend, the very same Flax
model), torchattacks and ART (PyTorch CPU, the same weights ported through safetensors), and a
reference one-pixel attack on ``scipy.optimize.differential_evolution``, one image at a time.

Every peer is optional: a missing package gives a row with ``skipped`` and the reason.
The torch port is checked before anything is timed: its logits must match the Flax model's to
``PORT_ATOL``; a port that does not match is reported and not timed.
"""

from __future__ import annotations

import importlib
import os
import tempfile
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

#: Largest |logit difference| accepted between the Flax model and its torch port.
PORT_ATOL = 1e-4


def missing(module: str, extra: str) -> str | None:
    """None if ``module`` imports, else a reason naming the extra that installs it."""
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - any import failure means the peer is unavailable
        how = f"pip install 'jaxadv[{extra}]'"
        if module == "torchattacks":
            how = "pip install --no-deps torchattacks==3.5.1 (its deps pull torchvision)"
        return f"{module} not importable ({type(e).__name__}: {e}); {how}"
    return None


# ---------------------------------------------------------------------------------------------
# foolbox 3, JAX backend, the same jaxadv.Model
# ---------------------------------------------------------------------------------------------


def foolbox_pgd(model: Any, *, eps: float, steps: int, step_size: float) -> Callable:
    """``run(x, y, epsilons) -> success[E, B]`` with foolbox's LinfPGD on the same model.

    The model is handed to foolbox jitted (``jax.jit(model)``), the most favourable set-up for the
    peer: foolbox itself runs its steps eagerly, one dispatch per operation.
    """
    import foolbox as fb

    fmodel = fb.JAXModel(jax.jit(lambda x: model(x)), bounds=(0.0, 1.0))
    attack = fb.attacks.LinfPGD(steps=steps, abs_stepsize=step_size, random_start=True)

    def run(x, y, epsilons=(eps,)):
        _, _, success = attack(fmodel, x, y, epsilons=list(epsilons))
        return jnp.asarray(success.raw if hasattr(success, "raw") else success)

    return run


# ---------------------------------------------------------------------------------------------
# torch port through safetensors (torchvision layout)
# ---------------------------------------------------------------------------------------------

# NNX HWIO kernels -> torch OIHW; Linear (in, out) -> (out, in).
_OIHW_FROM_HWIO = (3, 2, 0, 1)


def torch_state_dict(module: Any) -> dict[str, np.ndarray]:
    """The NNX module's weights under torchvision names and layouts (the inverse of
    :func:`jaxadv.nn.load_torch_state_dict`; works for ResNet and SmallCNN)."""
    from flax import nnx

    out: dict[str, np.ndarray] = {}
    for path, sub in nnx.iter_modules(module):
        prefix = ".".join(str(p) for p in path)
        prefix = prefix + "." if prefix else ""
        if isinstance(sub, nnx.Conv):
            out[prefix + "weight"] = np.asarray(sub.kernel.get_value()).transpose(_OIHW_FROM_HWIO)
            if sub.bias is not None:
                out[prefix + "bias"] = np.asarray(sub.bias.get_value())
        elif isinstance(sub, nnx.BatchNorm):
            out[prefix + "weight"] = np.asarray(sub.scale.get_value())
            out[prefix + "bias"] = np.asarray(sub.bias.get_value())
            out[prefix + "running_mean"] = np.asarray(sub.mean.get_value())
            out[prefix + "running_var"] = np.asarray(sub.var.get_value())
        elif isinstance(sub, nnx.Linear):
            out[prefix + "weight"] = np.asarray(sub.kernel.get_value()).T
            if sub.bias is not None:
                out[prefix + "bias"] = np.asarray(sub.bias.get_value())
    return {k: np.ascontiguousarray(v, np.float32) for k, v in out.items()}


def _torch_modules():
    """torch.nn definitions of SmallCNN and the torchvision ResNets (no torchvision needed)."""
    import torch
    from torch import nn

    class Normalize(nn.Module):
        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
            self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

        def forward(self, x):
            return (x - self.mean) / self.std

    class SmallCNN(nn.Module):
        def __init__(self, classes, k, width):
            super().__init__()
            self.conv1 = nn.Conv2d(k, width, 3, padding=1)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
            self.bn2 = nn.BatchNorm2d(2 * width)
            self.fc1 = nn.LazyLinear(128)
            self.fc2 = nn.Linear(128, classes)

        def forward(self, x):
            x = nn.functional.max_pool2d(torch.relu(self.bn1(self.conv1(x))), 2)
            x = nn.functional.max_pool2d(torch.relu(self.bn2(self.conv2(x))), 2)
            # Flatten in NHWC order, as the Flax model does.
            x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
            return self.fc2(torch.relu(self.fc1(x)))

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.downsample = _down(cin, c, stride)

        def forward(self, x):
            y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    class Bottle(nn.Module):
        expansion = 4

        def __init__(self, cin, c, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.conv3 = nn.Conv2d(c, 4 * c, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(4 * c)
            self.downsample = _down(cin, 4 * c, stride)

        def forward(self, x):
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (x if self.downsample is None else self.downsample(x)))

    def _down(cin, cout, stride):
        if stride == 1 and cin == cout:
            return None
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    class ResNet(nn.Module):
        def __init__(self, block, layers, classes, k, stem):
            super().__init__()
            self.stem = stem
            if stem == "imagenet":
                self.conv1 = nn.Conv2d(k, 64, 7, 2, 3, bias=False)
            else:
                self.conv1 = nn.Conv2d(k, 64, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            width = 64
            for i, (c, n) in enumerate(zip((64, 128, 256, 512), layers, strict=True)):
                blocks = []
                for j in range(n):
                    blocks.append(block(width, c, 2 if (i > 0 and j == 0) else 1))
                    width = c * block.expansion
                setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(width, classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            if self.stem == "imagenet":
                x = nn.functional.max_pool2d(x, 3, 2, 1)
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    return Normalize, SmallCNN, Basic, Bottle, ResNet


def torch_port(target: Any, workdir: str | None = None):
    """The target as a ``torch.nn.Module`` (NCHW input in ``[0, 1]``, eval mode), its weights
    written to and read back from a ``.safetensors`` file in torchvision layout.

    Returns ``(torch_model, max_abs_logit_diff)`` on the target's first 8 images.
    """
    import torch
    from torch import nn

    from jaxadv.nn import load_safetensors, save_safetensors

    torch.manual_seed(0)
    Normalize, SmallCNN, Basic, Bottle, ResNet = _torch_modules()
    h, k = target.x_all.shape[1], target.x_all.shape[-1]
    if target.name == "small_cnn":
        width = int(target.module.conv1.kernel.get_value().shape[-1])
        classes = int(target.module.fc2.kernel.get_value().shape[-1])
        net = SmallCNN(classes, k, width)
        net(torch.zeros(1, k, h, h))  # materialise the lazy fc1
    else:
        classes = int(target.module.fc.kernel.get_value().shape[-1])
        block, layers = (
            (Basic, (2, 2, 2, 2)) if target.name == "resnet18" else (Bottle, (3, 4, 6, 3))
        )
        net = ResNet(block, layers, classes, k, target.module.stem)
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, f"{target.name}.safetensors")
        save_safetensors(path, torch_state_dict(target.module))
        sd = {n: torch.from_numpy(a) for n, a in load_safetensors(path).items()}
    net.load_state_dict(sd, strict=False)
    unset = (
        set(net.state_dict())
        - set(sd)
        - {n for n in net.state_dict() if n.endswith("num_batches_tracked")}
    )
    if unset:
        raise RuntimeError(f"torch port left parameters unset: {sorted(unset)}")
    if target.mean is not None:
        net = nn.Sequential(Normalize(target.mean.tolist(), target.std.tolist()), net)
    net.eval()
    x, _ = target.batch(min(8, len(target.x_all)))
    with torch.no_grad():
        t_logits = net(torch.from_numpy(np.asarray(x).transpose(0, 3, 1, 2).copy())).numpy()
    j_logits = np.asarray(jax.jit(lambda m, x: m(x))(target.model, x))
    return net, float(np.max(np.abs(t_logits - j_logits)))


def to_nchw(x: Any):
    import torch

    return torch.from_numpy(np.array(np.asarray(x).transpose(0, 3, 1, 2), copy=True))


def torchattacks_pgd(net: Any, *, eps: float, steps: int, step_size: float) -> Callable:
    """``run(x, y) -> success[B]`` with torchattacks.PGD on the torch port."""
    import torch
    import torchattacks

    atk = torchattacks.PGD(net, eps=eps, alpha=step_size, steps=steps, random_start=True)

    def run(x, y):
        xt, yt = to_nchw(x), torch.from_numpy(np.asarray(y, np.int64))
        adv = atk(xt, yt)
        with torch.no_grad():
            return (net(adv).argmax(1) != yt).numpy()

    return run


def art_pgd(net: Any, *, eps: float, steps: int, step_size: float, shape, classes) -> Callable:
    """``run(x, y) -> success[B]`` with ART's ProjectedGradientDescent on the torch port."""
    import torch
    from art.attacks.evasion import ProjectedGradientDescentPyTorch
    from art.estimators.classification import PyTorchClassifier

    clf = PyTorchClassifier(
        model=net,
        loss=torch.nn.CrossEntropyLoss(),
        input_shape=shape,
        nb_classes=classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )

    def run(x, y):
        xn = np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))
        atk = ProjectedGradientDescentPyTorch(
            clf,
            norm=np.inf,
            eps=eps,
            eps_step=step_size,
            max_iter=steps,
            num_random_init=1,
            batch_size=len(xn),
            verbose=False,
        )
        adv = atk.generate(xn, y=np.asarray(y, np.int64))
        return clf.predict(adv, batch_size=len(xn)).argmax(1) != np.asarray(y)

    return run


# ---------------------------------------------------------------------------------------------
# scipy one-pixel reference
# ---------------------------------------------------------------------------------------------


def scipy_one_pixel(
    model: Any, *, population_size: int, num_generations: int, seed: int = 0
) -> Callable:
    """``run(x, y) -> (success[B], images_scored[B])``: Su et al.'s one-pixel attack as the public reference code
    does it, with ``scipy.optimize.differential_evolution`` per image.

    The candidate set of each generation is scored in one jitted model call (``vectorized=True``),
    so the model is as fast as jaxadv's; what differs is the optimiser. DE/rand/1, F = 0.5,
    crossover 1 (no crossover), no polishing, random init, genes ``(row, col, v_1..v_K)``; the
    attack stops as soon as one candidate is misclassified (jaxadv's ``early_stop='success'``).
    """
    from scipy.optimize import differential_evolution

    probs = jax.jit(lambda m, x: jax.nn.softmax(m(x), axis=-1))

    def one(x_img: np.ndarray, label: int, seed_i: int) -> tuple[bool, int]:
        h, w, k = x_img.shape
        dims = 2 + k
        found = [False]
        scored = [0]  # images sent to the model (scipy's nfev counts vectorised calls)

        def perturb(genes: np.ndarray) -> np.ndarray:  # genes [dims, S] -> images [S, h, w, k]
            s = genes.shape[1]
            imgs = np.repeat(x_img[None], s, axis=0)
            r = np.clip(genes[0].astype(np.int64), 0, h - 1)
            c = np.clip(genes[1].astype(np.int64), 0, w - 1)
            imgs[np.arange(s), r, c, :] = np.clip(np.round(genes[2:].T * 255) / 255, 0, 1)
            return imgs

        def fitness(genes: np.ndarray) -> np.ndarray:
            if genes.ndim == 1:
                genes = genes[:, None]
            scored[0] += genes.shape[1]
            p = np.asarray(probs(model, jnp.asarray(perturb(genes))))
            if np.any(p.argmax(1) != label):
                found[0] = True
            return p[:, label]

        def stop(*_: Any) -> bool:
            return found[0]

        differential_evolution(
            fitness,
            bounds=[(0, h), (0, w)] + [(0, 1)] * k,
            strategy="rand1bin",
            maxiter=num_generations,
            popsize=max(1, population_size // dims),
            mutation=0.5,
            recombination=1.0,
            tol=-1.0,  # never stop on convergence: only the success callback or maxiter stops it
            polish=False,
            init="random",
            seed=seed_i,
            vectorized=True,
            updating="deferred",
            callback=stop,
        )
        return found[0], scored[0]

    def run(x, y):
        xs, ys = np.asarray(x), np.asarray(y)
        res = [one(xs[i], int(ys[i]), seed + i) for i in range(len(xs))]
        return np.array([r[0] for r in res]), np.array([r[1] for r in res])

    return run


def timed(fn: Callable[[], Any], repeats: int) -> tuple[Any, float, float]:
    """``(result, first_s, median_steady_s)`` for a host-driven peer; with ``repeats=0`` the first
    call is the only one (for a peer already warmed up by the caller)."""
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    ts = [] if repeats > 0 else [first]
    for _ in range(max(0, repeats)):
        t0 = time.perf_counter()
        out = fn()
        ts.append(time.perf_counter() - t0)
    return out, first, float(np.median(ts))
