"""Caffe-semantics SGD (SPEC section 5): lr policies, lr_mult/decay_mult, iter_size,
weight decay on parameters without gradient, momentum history including the rate.
Imports nothing else of mlic: the loop that drives it is mlic.engine's Trainer (and
mlic.engine.caffe_solver.Solver for a Caffe solver file)."""
from mlic.solver.sgd import LR_POLICIES, CaffeSGD, check_lr_policy, learning_rate  # noqa: F401
