"""Caffe-semantics SGD (SPEC section 5): lr policies, lr_mult/decay_mult, iter_size,
weight decay on parameters without gradient, momentum history including the rate."""
from mlic.solver.sgd import LR_POLICIES, CaffeSGD, check_lr_policy, learning_rate  # noqa: F401
from mlic.solver.solver import Solver  # noqa: F401
