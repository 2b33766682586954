"""A small time-conditioned residual MLP score network (name 'mlp') for flat data such as
2-D toy distributions; any input (B, *shape) is flattened to (B, D) and the output has the
input's shape.

Config keys (``config.model``): ``nf`` hidden width, ``num_layers`` residual blocks,
``nonlinearity``, ``embedding_type`` ('fourier': Gaussian Fourier features of log σ, for VE
labels σ or integer SMLD indices; 'positional': sinusoidal embedding of the label as given,
e.g. 999·t for VP), ``fourier_scale``, ``dropout``, ``scale_by_sigma`` (divide the output by σ,
as NCSN++ on VE), optional ``conditional`` (default True) and ``init_scale`` (default 0: the
last layer of every residual branch starts near zero), ``dtype`` (compute dtype of the dense
layers, ``layers.get_dtype``; embeddings, layer-norm statistics and the output in its
``layers.full_precision``), ``num_classes`` K (default 0): K > 0 adds the class embedding e_y,
y in {0..K} with K the null label, to temb (``models.utils.class_embedding``).

Block: h ← h + W₂ · drop(act(W₁ · act(LN(h)) + V · act(temb))), then out = W_o · act(LN(h)).
The layer norms keep the network well-scaled for VE inputs whose size grows with σ.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from score_sde_jax.models import utils
from score_sde_jax.models.layers import (
    default_init,
    full_precision,
    get_act,
    get_dtype,
    get_timestep_embedding,
)
from score_sde_jax.models.layerspp import GaussianFourierProjection
from score_sde_jax.models.ncsnv2_layers import label_sigmas

Array = jax.Array


@utils.register_model(name='mlp')
class MLP(nn.Module):
    """Residual MLP s_θ(x, label) for x of shape (B, D) (or (B, ...), flattened)."""

    config: ml_collections.ConfigDict

    def _time_embedding(self, labels: Array) -> Array:
        m = self.config.model
        kind = m.embedding_type.lower()
        if kind == 'fourier':
            log_sigma = jnp.log(label_sigmas(labels, self.config))
            return GaussianFourierProjection(embedding_size=m.nf, scale=m.fourier_scale)(log_sigma)
        if kind == 'positional':
            return get_timestep_embedding(labels, m.nf, dtype=full_precision(get_dtype(self.config)))
        raise ValueError(f"config.model.embedding_type={m.embedding_type!r}: expected 'fourier' "
                         "or 'positional'")

    @nn.compact
    def __call__(self, x: Array, labels: Array, train: bool = True,
                 class_labels: Array | None = None) -> Array:
        """x: (B, *shape); labels: (B,) noise levels; class_labels: (B,) in {0..K} or None
        (null label K) for a label-conditional network. Returns the score (or ε̂ for VP)."""
        m = self.config.model
        if labels.shape != x.shape[:1]:
            raise ValueError(f'labels must have shape {x.shape[:1]}, got {labels.shape}')
        act = get_act(self.config)
        nf, dtype = m.nf, get_dtype(self.config)

        def dense(features, scale=1.0):
            return nn.Dense(features, kernel_init=default_init(scale), dtype=dtype)

        def norm(h):
            return nn.LayerNorm(dtype=dtype)(h)

        temb = None
        if m.get('conditional', True):
            temb = dense(4 * nf)(self._time_embedding(labels))
            temb = dense(4 * nf)(act(temb))
        temb = utils.class_embedding(self.config, temb, class_labels, x.shape[0], 4 * nf)

        h = dense(nf)(x.reshape((x.shape[0], -1)).astype(dtype))
        for _ in range(m.num_layers):
            r = dense(nf)(act(norm(h)))
            if temb is not None:
                r = r + dense(nf)(act(temb))
            r = nn.Dropout(m.dropout, deterministic=not train)(act(r))
            h = h + dense(nf, m.get('init_scale', 0.0))(r)
        out = dense(math.prod(x.shape[1:]))(act(norm(h))).astype(full_precision(dtype))

        if m.scale_by_sigma:
            out = out / label_sigmas(labels, self.config)[:, None]
        return out.reshape(x.shape)
