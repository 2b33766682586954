"""The NCSN++ network, deep (8 blocks per resolution), on CIFAR-10 with the sub-VP SDE."""

from configs.subvp.cifar10_ncsnpp_continuous import get_config as _subvp_ncsnpp


def get_config():
    config = _subvp_ncsnpp()
    config.training.n_iters = 950001
    config.model.num_res_blocks = 8
    return config
