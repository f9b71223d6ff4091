"""Real chest X-rays: attack strength on the shipped reference CNN (trained on the shared
PneumoniaMNIST file) and against a peer library on the same model and batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxadv
from jaxadv.checkpoint import reference_model

EPS = 4 / 255


@pytest.fixture(scope="module")
def batch(pneumonia_path):
    with np.load(pneumonia_path) as f:
        x = f["test_images"][:128].astype(np.float32)[..., None] / 255
        y = f["test_labels"][:128, 0].astype(np.int32)
    return jnp.asarray(x), jnp.asarray(y)


@pytest.fixture(scope="module")
def model():
    return reference_model("small_cnn_clean")


def test_apgd_at_least_as_strong_as_pgd(batch, model):
    x, y = batch
    clean = float(jaxadv.clean_accuracy(model, x, y))
    t = jaxadv.LinfBall(eps=EPS)
    pgd = jaxadv.PGD(threat=t, num_steps=20)(jax.random.key(0), model, x, y)
    apgd = jaxadv.APGD(threat=t, num_steps=20)(jax.random.key(0), model, x, y)
    ra_pgd, ra_apgd = float(jaxadv.robust_accuracy(pgd)), float(jaxadv.robust_accuracy(apgd))
    assert clean > 0.7, clean  # the reference model is a real classifier
    assert ra_pgd <= clean and ra_apgd <= clean
    assert ra_apgd <= ra_pgd, (ra_apgd, ra_pgd)
    assert ra_pgd < clean - 0.1  # the attack does something at 4/255


def test_pgd_no_weaker_than_foolbox(batch, model):
    fb = pytest.importorskip(
        "foolbox", reason="peer check needs foolbox 3 (pip install 'jaxadv[bench]')"
    )
    x, y = batch
    fmodel = fb.JAXModel(model, bounds=(0.0, 1.0))
    _, fb_adv, fb_success = fb.attacks.LinfPGD(steps=40)(fmodel, x, y, epsilons=EPS)
    fb_ra = 1.0 - float(np.mean(np.asarray(fb_success)))
    ours = jaxadv.PGD(threat=jaxadv.LinfBall(eps=EPS), num_steps=40)(jax.random.key(0), model, x, y)
    our_ra = float(jaxadv.robust_accuracy(ours))
    # foolbox's adversarials really are within eps and its success is honest
    assert float(jnp.max(jnp.abs(fb_adv - x))) <= EPS + 1e-6
    assert our_ra <= fb_ra + 0.01, (our_ra, fb_ra)
