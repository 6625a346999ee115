"""Preference and RL objectives over log-probabilities, exact to TRL 1.16's formulas: DPO's loss family, KTO,
ORPO, CPO/SimPO (``preference``) and GRPO's loss family with the vLLM importance-sampling correction
(``grpo``). Each returns ``ObjectiveResult(loss, metrics)``: device tensors, no host sync."""
from ._common import ObjectiveResult
from .grpo import LOSS_TYPES as GRPO_LOSS_TYPES
from .grpo import ImportanceSamplingRatio, grpo_loss, vllm_importance_sampling_ratio
from .preference import (CPO_LOSS_TYPES, DPO_LOSS_TYPES, F_DIVERGENCE_TYPES, KTO_LOSS_TYPES, cpo_loss, dpo_loss,
                         kto_loss, orpo_loss, simpo_loss)

__all__ = ["ObjectiveResult", "ImportanceSamplingRatio", "grpo_loss", "vllm_importance_sampling_ratio",
           "dpo_loss", "kto_loss", "orpo_loss", "cpo_loss", "simpo_loss", "DPO_LOSS_TYPES", "KTO_LOSS_TYPES",
           "CPO_LOSS_TYPES", "F_DIVERGENCE_TYPES", "GRPO_LOSS_TYPES"]
from .linear import (linear_cpo_loss, linear_dpo_loss, linear_grpo_loss, linear_kto_loss,  # noqa: E402
                     linear_orpo_loss, linear_simpo_loss)

__all__ += ["linear_grpo_loss", "linear_dpo_loss", "linear_kto_loss", "linear_orpo_loss", "linear_cpo_loss",
            "linear_simpo_loss"]
