"""The interface of an auxiliary loss: a named, weighted term computed from one training batch.

:meth:`OMGLLaVA.compute_loss <omg_llava.models.OMGLLaVA.compute_loss>` calls every configured term
after its own losses, as ``term(model, data, llm_output, seg, prompts)``, and logs the result as
``term.name``.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from torch import Tensor

if TYPE_CHECKING:
    from ..omg_llava import OMGLLaVA, PromptRows, SegQueries


class AuxiliaryLoss(ABC):
    """A training term outside the released recipe.

    Subclasses set :attr:`name` (the ``loss_*`` key that mmengine logs and sums) and implement
    :meth:`compute`.

    Args:
        weight: factor on :meth:`compute`'s value, > 0 (to turn a term off, leave it out of
            ``auxiliary_losses``).
    """

    name: str = ''

    def __init__(self, weight: float = 1.0) -> None:
        if not weight > 0:
            raise ValueError(f'{type(self).__name__} weight must be > 0, got {weight}; leave the '
                             'term out of auxiliary_losses to turn it off')
        self.weight = weight

    def __call__(self, model: OMGLLaVA, data: dict, llm_output: Any,
                 seg: SegQueries | None, prompts: PromptRows) -> Tensor:
        return self.weight * self.compute(model, data, llm_output, seg, prompts)

    @abstractmethod
    def compute(self, model: OMGLLaVA, data: dict, llm_output: Any,
                seg: SegQueries | None, prompts: PromptRows) -> Tensor:
        """The unweighted term: a scalar in the autograd graph (0 when the batch has none to use).

        Args:
            model: the model computing its losses (its LLM, token ids, projectors).
            data: the batch, as :meth:`~omg_llava.models.OMGLLaVA.forward` takes it.
            llm_output: the LLM's output on the spliced batch (``.logits`` (B, T, V),
                ``.hidden_states``).
            seg: the decoded ``[SEG]`` queries that the mask losses supervised; ``None`` in the
                pretrain stage and when no sample's ``[SEG]`` count matched its masks.
            prompts: the visual-prompt embeddings spliced into the main pass.
        """
