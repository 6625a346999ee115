"""Drop-in replacements for ``torch.nn.functional`` losses, one module per kernel family.

Same names, signatures (deprecated ``size_average``/``reduce`` included), values, gradients and exception
types as torch. Extras are keyword-only and off by default. Each function hands its arguments, positionally,
to ``fusedloss.dispatch.call`` with the loss's route (below each function in its family's module): torch's own
function on the eager path (its checks, warnings and errors as they are), or the checks torch would make
followed by the fused op. Modules: ``softmax_rows`` (cross_entropy, nll_loss), ``matmul_rows`` (the LM-head
losses), ``pointwise``, ``row_margin`` (with the ranking losses and ctc_loss), ``distribution_rows`` (jsd_loss,
log_probs).
"""
from .distribution_rows import TokenStats, jsd_loss, log_probs
from .matmul_rows import linear_cross_entropy, linear_jsd_loss, linear_log_probs
from .pointwise import (binary_cross_entropy, binary_cross_entropy_with_logits, gaussian_nll_loss, hinge_embedding_loss,
                        huber_loss, kl_div, l1_loss, margin_ranking_loss, mse_loss, poisson_nll_loss, sigmoid_focal_loss,
                        smooth_l1_loss, soft_margin_loss)
from .row_margin import (cosine_embedding_loss, cosine_similarity, ctc_loss, multi_margin_loss, multilabel_margin_loss,
                         multilabel_soft_margin_loss, pairwise_distance, rank_cross_entropy_loss, rank_hinge_loss,
                         triplet_margin_loss, triplet_margin_with_distance_loss)
from .softmax_rows import cross_entropy, nll_loss

__all__ = ["cross_entropy", "nll_loss", "linear_cross_entropy",
           "binary_cross_entropy", "binary_cross_entropy_with_logits", "smooth_l1_loss", "huber_loss", "l1_loss",
           "mse_loss", "soft_margin_loss", "kl_div", "poisson_nll_loss", "gaussian_nll_loss",
           "margin_ranking_loss", "hinge_embedding_loss", "sigmoid_focal_loss",
           "multi_margin_loss", "multilabel_margin_loss", "multilabel_soft_margin_loss", "cosine_embedding_loss",
           "triplet_margin_loss", "triplet_margin_with_distance_loss", "pairwise_distance", "cosine_similarity",
           "rank_hinge_loss", "rank_cross_entropy_loss", "ctc_loss",
           "jsd_loss", "log_probs", "linear_jsd_loss", "linear_log_probs"]
