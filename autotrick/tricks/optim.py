"""Optimizer and its parameter groups, weight decay and an L1 penalty.

weight decay: L2 (decoupled for adamw); `no_decay_bias_norm` puts biases and norm parameters in a
group with weight_decay 0 (they carry no overfitting capacity, decaying them only hurts).
L1: loss += l1 * sum(|w|) over the weights of conv and linear layers.
"""

from autotrick.params import Param, Trick, When

OPTIMIZERS = ("sgd", "adamw", "adam", "rmsprop", "adagrad")
_SGD = When("name", ("sgd",))

OPTIM = Trick(
    name="optim",
    summary="optimizer, lr (log scale), weight decay, no decay on bias/norm, L1 penalty",
    params=(
        Param("name", "choice", "sgd", "optimizer", choices=OPTIMIZERS),
        Param("lr", "float", 0.05, "peak learning rate", low=1e-3, high=0.3, log=True, bounds=(1e-7, 10.0)),
        Param("momentum", "float", 0.9, "SGD momentum", low=0.0, high=0.99, bounds=(0.0, 0.999), when=_SGD),
        Param("nesterov", "bool", False, "SGD Nesterov momentum", when=_SGD),
        Param("weight_decay", "float", 0.0, "L2 weight decay (decoupled for adamw); 0 is off",
              low=0.0, high=0.01, bounds=(0.0, 1.0)),
        Param("no_decay_bias_norm", "bool", False, "exempt biases and norm parameters from weight decay"),
        Param("l1", "float", 0.0, "L1 penalty coefficient on conv/linear weights; 0 is off",
              low=0.0, high=1e-4, bounds=(0.0, 1.0)),
    ),
)
