"""fusedoptim: fused, in-place, bitwise-reproducible optimizer steps for CPU training.

Three layers: functional in-place steps (``adam_``, ``sgd_``, ...), stateful NumPy optimizers
(``Adam``, ``SGD``, ...), and, with torch installed, ``fusedoptim.torch``. Importing this
package never imports torch.
"""

from . import reference
from ._backends import available as available_backends
from .functional import (adadelta_, adagrad_, adam_, adamax_, adamw_, asgd_, lamb_, lion_, nadam_, radam_, rmsprop_,
                         rprop_, sgd_)
from .optim import (ASGD, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lamb, Lion, NAdam, Optimizer, RAdam, RMSprop,
                    Rprop)
from ._config import get_num_threads, isa_levels, set_isa, set_num_threads, show_config
from ._norms import clip_grad_norm_

__all__ = [
    "sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_", "adamax_", "adadelta_", "radam_", "nadam_", "lion_", "lamb_",
    "asgd_", "rprop_",
    "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adamax", "Adadelta", "RAdam", "NAdam", "Lion", "Lamb", "ASGD", "Rprop",
    "Optimizer",
    "available_backends", "isa_levels", "set_isa", "set_num_threads", "get_num_threads", "show_config",
    "clip_grad_norm_", "reference",
]
__version__ = "0.1.0"
