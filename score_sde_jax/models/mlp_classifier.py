"""A small noise-conditional MLP classifier p_t(y | x) for flat data (name 'mlp_classifier').

x (B, *shape) is flattened; the noise-level embedding is that of the score MLP
(:mod:`score_sde_jax.models.mlp`: ``embedding_type`` 'fourier' of log σ or 'positional' of the
label, then Dense(4 nf) → act → Dense(4 nf)). ``num_layers`` hidden layers
h ← act(LN(W h + V act(temb))) of width ``nf`` (the layer norm keeps VE inputs, whose size grows
with σ, well scaled), then a ``num_classes``-way dense head: logits (B, num_classes).
Config keys (``config.model``): ``nf``, ``num_layers``, ``nonlinearity``, ``embedding_type``,
``fourier_scale``, ``num_classes``, optional ``conditional`` (default True).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from score_sde_jax.models import utils
from score_sde_jax.models.layers import default_init, get_act
from score_sde_jax.models.mlp import MLP

Array = jax.Array


@utils.register_model(name="mlp_classifier")
class MLPClassifier(MLP):
    """Logits of p_t(y | x): x (B, *shape), labels (B,) noise levels -> (B, num_classes)."""

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True) -> Array:
        m = self.config.model
        if labels.shape != x.shape[:1]:
            raise ValueError(f"labels must have shape {x.shape[:1]}, got {labels.shape}")
        act = get_act(self.config)
        def dense(features):
            return nn.Dense(features, kernel_init=default_init())

        temb = None
        if m.get("conditional", True):
            temb = self._time_embedding(labels)
            temb = dense(4 * m.nf)(act(dense(4 * m.nf)(temb)))

        h = x.reshape((x.shape[0], -1))
        for _ in range(m.num_layers):
            h = dense(m.nf)(h)
            if temb is not None:
                h = h + dense(m.nf)(act(temb))
            h = act(nn.LayerNorm()(h))
        return dense(m.num_classes)(h)
