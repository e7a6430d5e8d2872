"""SambaY (Phi-4-mini-flash) model for transformers.

Importing this package registers ``Phi4FlashConfig`` (model_type ``phi4flash``) with ``AutoConfig`` and
``Phi4FlashForCausalLM`` with ``AutoModelForCausalLM``, so official-layout checkpoints load without remote code.
"""
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from .cache import Phi4FlashCache
from .configuration_phi4flash import LayerRole, Phi4FlashConfig
from .modeling_phi4flash import Phi4FlashForCausalLM, Phi4FlashModel, Phi4FlashPreTrainedModel

AutoConfig.register(Phi4FlashConfig.model_type, Phi4FlashConfig, exist_ok=True)
AutoModel.register(Phi4FlashConfig, Phi4FlashModel, exist_ok=True)
AutoModelForCausalLM.register(Phi4FlashConfig, Phi4FlashForCausalLM, exist_ok=True)

__all__ = [
    "LayerRole",
    "Phi4FlashCache",
    "Phi4FlashConfig",
    "Phi4FlashForCausalLM",
    "Phi4FlashModel",
    "Phi4FlashPreTrainedModel",
]
