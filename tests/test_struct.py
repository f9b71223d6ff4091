"""jaxadv._struct.pytree_dataclass: tree structures tell classes apart, leaves keep field order."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxadv
from jaxadv._struct import pytree_dataclass, static


@pytree_dataclass
class _Left:
    a: jax.Array
    b: jax.Array
    tag: str = static(default="t")


@pytree_dataclass
class _Right:
    a: jax.Array
    b: jax.Array
    tag: str = static(default="t")


class _Colliding:
    """A cache key whose hash always collides: only equality decides a lookup."""

    def __init__(self, treedef):
        self.treedef = treedef

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other) -> bool:
        return self.treedef == other.treedef


def test_same_fields_different_class_structures_differ():
    # With jax.tree_util.register_dataclass these compared equal (jax 0.10.2): a structure-keyed
    # jit cache could hand one threat's compiled APGD to the other on a hash collision.
    left = jax.tree.structure(_Left(a=1.0, b=2.0))
    right = jax.tree.structure(_Right(a=1.0, b=2.0))
    assert left != right
    linf = jax.tree.structure(jaxadv.APGD(threat=jaxadv.LinfBall(eps=0.1)))
    l2 = jax.tree.structure(jaxadv.APGD(threat=jaxadv.L2Ball(eps=0.1)))
    assert linf != l2
    cache = {_Colliding(linf): "linf"}
    assert cache.get(_Colliding(l2)) is None
    assert cache.get(_Colliding(jax.tree.structure(jaxadv.APGD(threat=jaxadv.LinfBall(eps=0.2)))))


def test_leaves_paths_and_round_trip():
    obj = _Left(a=np.float32(1.0), b=np.float32(2.0), tag="x")
    leaves, treedef = jax.tree.flatten(obj)
    assert leaves == [1.0, 2.0]  # data fields in declaration order; static fields are not leaves
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(obj)[0]]
    assert paths == [".a", ".b"]
    back = jax.tree.unflatten(treedef, leaves)
    assert back == obj and back.tag == "x"
    assert jax.tree.structure(_Left(a=1.0, b=2.0, tag="y")) != treedef  # static field is aux


def test_jit_runs_each_threat_class_on_its_own_program():
    model = jaxadv.from_apply(lambda w, x: x.reshape(x.shape[0], -1) @ w, jnp.eye(4, 3))
    x, y = jnp.full((2, 2, 2, 1), 0.5), jnp.array([0, 1])
    for threat, norm in ((jaxadv.LinfBall(eps=0.3), np.inf), (jaxadv.L2Ball(eps=0.3), 2)):
        res = jaxadv.APGD(threat=threat, num_steps=2)(jax.random.key(0), model, x, y)
        d = np.asarray(res.adv - x).reshape(2, -1)
        assert np.all(np.linalg.norm(d, ord=norm, axis=1) <= 0.3 + 1e-5)
