"""Data sources behind :mod:`score_sde_jax.datasets`: image sources and resizing, 2-D toys."""
