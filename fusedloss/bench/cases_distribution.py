"""Benchmark entries of the distribution-rows family: jsd_loss (generalized JSD; forward KL at T = 2) and
log_probs with the entropy.

fusedloss's own functions: the reference is their definition in torch ops (TRL's formulas), evaluated by
torch at the benchmark's dtype; torch.compile compiles that. Shapes (N tokens, V vocabulary): a 32000 and
a Llama 3 128256 vocabulary on a GPU, 64 x 3001 through the traffic meter. The student's logits
differentiated, the teacher frozen, 5% of the labels ignored.
"""
import torch

from . import inputs, peers
from .entry import Inputs, LossBench, eager_reference


def jsd_inputs(shape, dtype, device):
    n_rows, n_classes = shape
    student = torch.randn(n_rows, n_classes, device=device, dtype=dtype).requires_grad_()
    teacher = torch.randn(n_rows, n_classes, device=device, dtype=dtype)
    return Inputs((student, teacher, inputs.class_targets((n_rows,), n_classes, device)), {}, (student,))


_SHAPES = dict(gpu_shapes=[(8192, 32000), (8192, 128256), (16384, 128256)], quick_shapes=[(8192, 128256)],
               cpu_shapes=[(256, 32000)], traffic_shapes=[(64, 3001)])
NO_GRPO_PEER = {"liger (GRPO)": "Liger-Kernel's GRPO loss fuses its own policy objective around the log-probs: "
                                "not comparable on the per-token log-probabilities alone"}

ENTRIES = [
    LossBench(name="jsd_loss", family="distribution rows", make_inputs=jsd_inputs, kwargs={"beta": 0.5},
              reference=eager_reference("jsd_loss"), peers={"liger": peers.liger_jsd},
              variants={"grad in forward": {"grad_in_forward": True}}, **_SHAPES),
    LossBench(name="jsd_loss", family="distribution rows", variant="forward KL, T=2", make_inputs=jsd_inputs,
              kwargs={"beta": 0.0, "temperature": 2.0}, reference=eager_reference("jsd_loss"),
              peers={"liger": peers.liger_jsd}, dtypes=(torch.bfloat16,), **_SHAPES),
    LossBench(name="log_probs", family="distribution rows", variant="entropy", make_inputs=inputs.logits_and_targets,
              kwargs={"with_entropy": True}, reference=eager_reference("log_probs"), sum_output=True,
              peer_notes=NO_GRPO_PEER, **_SHAPES),
]
