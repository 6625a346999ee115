"""torch.nn.functional as torch defines it, captured when fusedloss is imported.

``fusedloss.patch()`` replaces the loss functions of ``torch.nn.functional`` with fusedloss's; fusedloss's
own eager path and references must still reach torch's, so they use this snapshot, never the module.
"""
import types

import torch.nn.functional as _functional

F = types.SimpleNamespace(**vars(_functional))
