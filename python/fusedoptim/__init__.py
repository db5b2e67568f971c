"""fusedoptim: fused, in-place, bitwise-reproducible optimizer steps for CPU training.

Three layers: functional in-place steps (``adam_``, ``sgd_``, ...), stateful NumPy optimizers
(``Adam``, ``SGD``, ...), and, with torch installed, ``fusedoptim.torch``. Importing this
package never imports torch.
"""

from . import reference
from ._backends import available as available_backends
from .functional import adagrad_, adam_, rmsprop_, sgd_
from .optim import SGD, Adagrad, Adam, Optimizer, RMSprop
from ._config import get_num_threads, isa_levels, set_isa, set_num_threads, show_config

__all__ = [
    "sgd_", "adagrad_", "rmsprop_", "adam_",
    "SGD", "Adagrad", "RMSprop", "Adam", "Optimizer",
    "available_backends", "isa_levels", "set_isa", "set_num_threads", "get_num_threads", "show_config",
    "reference",
]
__version__ = "0.1.0"
