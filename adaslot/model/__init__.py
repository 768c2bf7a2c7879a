"""The slot model: `AdaSlot(cfg)` and its parts (slot attention, Gumbel selector, MLP decoder)."""

from adaslot.model.adaslot import AdaSlot, ModelOutput, load_stage1_into_stage2
from adaslot.model.decoder import MLPDecoder, masked_alpha
from adaslot.model.selector import GumbelSelector
from adaslot.model.slot_attention import SlotAttention

__all__ = ["AdaSlot", "GumbelSelector", "MLPDecoder", "ModelOutput", "SlotAttention",
           "load_stage1_into_stage2", "masked_alpha"]
