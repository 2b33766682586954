"""Experiment configurations: one ``get_config() -> ml_collections.ConfigDict`` per file, at the
paths of the official score_sde (``ve/``, ``vp/``, ``subvp/``), plus ``vp_cifar10.py``,
``digits.py``, ``toy_gmm.py`` and the CPU-sized ``tiny/`` configs. Files import each other as
``configs.*``, so run from the repository root (as ``main.py`` does)."""
