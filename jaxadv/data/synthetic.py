"""A synthetic multi-label task whose findings are visible features (for tests and examples).

No multi-label medical data can be read offline here (ChestMNIST must be downloaded by the user),
so multi-label code is tested on images where each finding is a bright square at its own place:
a tiny model learns every finding in seconds, and an attack has to erase or paint a square to flip
one.
"""

from __future__ import annotations

import math

import numpy as np

from jaxadv.data._dataset import Dataset, from_arrays


def synthetic_findings(
    num_examples: int = 256,
    *,
    num_findings: int = 4,
    size: int = 16,
    prevalence: float = 0.5,
    noise: float = 0.2,
    seed: int = 0,
) -> Dataset:
    """Grey images ``[N, size, size, 1]`` with ``num_findings`` independent findings.

    The image is split into a grid of ``ceil(sqrt(F))`` x ``ceil(sqrt(F))`` cells; finding ``k``
    present means a bright square (intensity in ``[0.7, 1]``) fills the middle of cell ``k``.
    The background is uniform noise in ``[0, noise]``. Each finding is present with probability
    ``prevalence``, independently.

    Args:
      num_examples: ``N``.
      num_findings: ``F`` (at least 2; one finding is a binary task).
      size: image side in pixels (at least 4 pixels per grid cell).
      prevalence: probability that a finding is present, in ``(0, 1)``.
      noise: background noise amplitude in ``[0, 0.5]``.
      seed: NumPy seed (the same seed gives the same images).

    Returns:
      A multi-label :class:`~jaxadv.data.Dataset`: float32 images in ``[0, 1]``, int32 multi-hot
      labels ``[B, F]``, ``label_names`` ``('finding0', ...)``.

    Example:
      >>> from jaxadv.data import synthetic_findings
      >>> ds = synthetic_findings(8, num_findings=3, size=12)
      >>> x, y = ds.take(8)
      >>> ds.multi_label, x.shape, y.shape
      (True, (8, 12, 12, 1), (8, 3))
    """
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive integer, got {num_examples!r}")
    if isinstance(num_findings, bool) or not isinstance(num_findings, int) or num_findings < 2:
        # one finding would be stored as [N, 1] labels, which every loader reads as single-label
        raise ValueError(f"num_findings must be an integer >= 2, got {num_findings!r}")
    grid = math.ceil(math.sqrt(num_findings))
    if isinstance(size, bool) or not isinstance(size, int) or size < 4 * grid:
        raise ValueError(
            f"size must be an integer >= {4 * grid} (4 pixels per cell of the {grid}x{grid} grid "
            f"for {num_findings} findings), got {size!r}"
        )
    if not 0.0 < prevalence < 1.0:
        raise ValueError(f"prevalence must lie in (0, 1), got {prevalence!r}")
    if not 0.0 <= noise <= 0.5:
        raise ValueError(f"noise must lie in [0, 0.5], got {noise!r}")
    rng = np.random.default_rng(seed)
    y = (rng.random((num_examples, num_findings)) < prevalence).astype(np.int32)
    x = rng.uniform(0.0, noise, (num_examples, size, size, 1)).astype(np.float32)
    cell = size // grid
    m = max(1, cell // 4)  # margin inside the cell
    for k in range(num_findings):
        r, c = divmod(k, grid)
        r0, c0 = r * cell + m, c * cell + m
        r1, c1 = (r + 1) * cell - m, (c + 1) * cell - m
        shape = (num_examples, r1 - r0, c1 - c0, 1)
        bright = rng.uniform(0.7, 1.0, shape).astype(np.float32)
        on = y[:, k].astype(bool)
        x[on, r0:r1, c0:c1] = bright[on]
    names = tuple(f"finding{k}" for k in range(num_findings))
    return from_arrays(
        x, y, num_classes=num_findings, name="synthetic_findings", split="", label_names=names
    )
