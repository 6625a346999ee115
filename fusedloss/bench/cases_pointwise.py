"""Benchmark entries of the pointwise family: every loss that is a formula per element.

Inputs are flat vectors (pointwise losses see only the element count), 2-D where a weight broadcasts along
the last dimension (pos_weight) or the reduction needs rows (kl_div's batchmean). grad_tensors: what a
training step differentiates -- the prediction (input), plus var for the Gaussian NLL (a predicted
variance) and both scores of the margin ranking loss; targets are data. Tensors that the minimal traffic
must count are passed positionally (Inputs.nbytes counts args). Shapes: 2**20 to 2**28 elements on a GPU,
3001 (odd: a masked last block) through the traffic meter.
"""
from . import inputs
from .entry import LossBench, eager_reference
from .inputs import log_probability, normal, positional, positive, probability, sign

_SHAPES = dict(gpu_shapes=[(2**20,), (2**24,), (2**26,), (2**28,)], quick_shapes=[(2**24,)],
               cpu_shapes=[(2**20,)], traffic_shapes=[(3001,)])
_2D_SHAPES = dict(gpu_shapes=[(2**10, 1024), (2**14, 1024), (2**16, 1024), (2**18, 1024)],
                  quick_shapes=[(2**14, 1024)], cpu_shapes=[(2**10, 1024)], traffic_shapes=[(5, 1001)])
# binary_cross_entropy_with_logits(input, target, weight, size_average, reduce, reduction, pos_weight)
_BCE_LOGITS_POS_WEIGHT = (normal, probability, None, None, None, "mean", inputs.last_dim_weight)

ENTRIES = [
    LossBench(name="binary_cross_entropy", family="pointwise", make_inputs=positional(probability, probability),
              **_SHAPES),
    LossBench(name="binary_cross_entropy_with_logits", family="pointwise",
              make_inputs=positional(normal, probability), **_SHAPES),
    LossBench(name="binary_cross_entropy_with_logits", family="pointwise", variant="pos_weight",
              make_inputs=positional(*_BCE_LOGITS_POS_WEIGHT), **_2D_SHAPES),
    LossBench(name="smooth_l1_loss", family="pointwise", make_inputs=positional(normal, normal), **_SHAPES),
    LossBench(name="huber_loss", family="pointwise", make_inputs=positional(normal, normal), **_SHAPES),
    LossBench(name="l1_loss", family="pointwise", make_inputs=positional(normal, normal), **_SHAPES),
    LossBench(name="mse_loss", family="pointwise", make_inputs=positional(normal, normal), **_SHAPES),
    LossBench(name="soft_margin_loss", family="pointwise", make_inputs=positional(normal, sign), **_SHAPES),
    LossBench(name="kl_div", family="pointwise", kwargs={"reduction": "batchmean"},
              make_inputs=positional(log_probability, probability), **_2D_SHAPES),
    LossBench(name="poisson_nll_loss", family="pointwise", make_inputs=positional(normal, inputs.counts),
              **_SHAPES),
    LossBench(name="gaussian_nll_loss", family="pointwise",
              make_inputs=positional(normal, normal, positive, grad=(0, 2)), **_SHAPES),
    LossBench(name="margin_ranking_loss", family="pointwise",
              make_inputs=positional(normal, normal, sign, grad=(0, 1)), **_SHAPES),
    LossBench(name="hinge_embedding_loss", family="pointwise", make_inputs=positional(positive, sign), **_SHAPES),
    # torchvision.ops.sigmoid_focal_loss (torchvision is not a dependency): fusedloss's eager path
    LossBench(name="sigmoid_focal_loss", family="pointwise", kwargs={"reduction": "mean"},
              reference=eager_reference("sigmoid_focal_loss"), make_inputs=positional(normal, probability),
              **_SHAPES),
]
