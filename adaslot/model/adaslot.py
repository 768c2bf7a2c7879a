"""The AdaSlot / DINOSAUR model after the frozen encoder:
features [B, T, D] -> input MLP -> slot attention -> (stage 2) selector -> MLP decoder.
The stage-2 selector is AdaSlot's Gumbel score network, or quality-guided selection on the slot-attention
map (`cfg.selector`; docs/method.md#quality-selection).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from adaslot.config import ModelConfig
from adaslot.errors import AdaslotError
from adaslot.model.decoder import MLPDecoder
from adaslot.model.quality import quality_select
from adaslot.model.selector import KEEP_MODES, GumbelSelector
from adaslot.model.slot_attention import SlotAttention, two_layer_mlp

SELECTOR_PREFIX = "selector."


@dataclass
class ModelOutput:
    """slots [B, K, S], alpha [B, K, T] (decoder masks), recon [B, T, D], keep [B, K] hard 0/1 (stage 2 with
    selection on, else None), keep_logits [B, K, 2] (index 1 = keep; Gumbel selector only, else None), attn
    [B, K, T] (slot attention, last iteration, softmax over slots)."""

    slots: torch.Tensor
    alpha: torch.Tensor
    recon: torch.Tensor
    keep: torch.Tensor | None
    keep_logits: torch.Tensor | None
    attn: torch.Tensor


class AdaSlot(nn.Module):
    """Stage 1 (cfg.adaptive False): fixed K slots. Stage 2: a keep/drop decision per slot masks the decoder.

    Submodules (and so state_dict keys): `input_mlp` (LN, Linear, ReLU, Linear), `slot_attention`
    (incl. `slots_mu`, `slots_logsigma`), `selector` (stage 2 with cfg.selector "adaslot" only; the quality
    selector has no parameters), `decoder` (`pos_embed`, `mlp`).
    `cfg.sparse_decoding` (default True) uses the packed kept-slot decoder when autograd is on and the keep
    mask is hard; False gives the dense official computation (docs/method.md#deviations: the 1e-5 caveat).
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_mlp = two_layer_mlp(cfg.feature_dim, cfg.input_mlp_hidden, cfg.slot_dim)
        self.slot_attention = SlotAttention(
            cfg.slot_dim, cfg.slot_mlp_hidden, cfg.num_iterations, cfg.eps,
            cfg.slot_init_scale, cfg.attention_temperature,
        )
        gumbel = cfg.adaptive and cfg.selector == "adaslot"
        self.selector = GumbelSelector(cfg.slot_dim, cfg.selector_hidden) if gumbel else None
        self.decoder = MLPDecoder(cfg.slot_dim, cfg.feature_dim, cfg.num_tokens, tuple(cfg.decoder_hidden),
                                  cfg.split_first_layer)

    def forward(self, features: torch.Tensor, slots_init: torch.Tensor | None = None,
                gumbel_noise: torch.Tensor | None = None, keep_mode: str | None = None,
                select: bool = True) -> ModelOutput:
        """features [B, T, D]; slots_init [B, K, S] replaces the sampled S0; gumbel_noise [B, K, 2] replaces
        the sampled Gumbel noise; keep_mode "gumbel" (default in train mode) or "deterministic" (default in
        eval mode). With both tensors given, the forward is a deterministic function of the inputs.
        select=False (a selection warm-up in training): no keep decision, every slot decodes as in stage 1."""
        b = features.shape[0]
        if slots_init is None:
            slots_init = self.slot_attention.sample_init(b, self.cfg.num_slots)
        if features.shape[1:] != (self.cfg.num_tokens, self.cfg.feature_dim):
            raise AdaslotError(
                f"features have shape {tuple(features.shape[1:])} per sample, the model expects "
                f"({self.cfg.num_tokens}, {self.cfg.feature_dim}); check the encoder/preset")
        inputs = self.input_mlp(features)
        slots, attn = self.slot_attention(inputs, slots_init)
        keep = keep_logits = None
        if self.selector is not None and select:
            mode = keep_mode or ("gumbel" if self.training else "deterministic")
            if mode not in KEEP_MODES:
                raise AdaslotError(f"keep_mode must be one of {KEEP_MODES}, got {mode!r}")
            keep, keep_logits = self.selector(slots, mode, gumbel_noise)
        elif self.cfg.adaptive and self.cfg.selector == "quality" and select:
            c = self.cfg
            keep = quality_select(attn, k_min=c.quality_k_min, tau=c.quality_tau, rho=c.quality_rho,
                                  alpha=c.quality_alpha).to(slots.dtype)
        sparse = self.cfg.sparse_decoding and keep is not None and torch.is_grad_enabled()
        recon, alpha = self.decoder(slots, keep, sparse=sparse)
        return ModelOutput(slots=slots, alpha=alpha, recon=recon, keep=keep, keep_logits=keep_logits,
                           attn=attn)


def load_stage1_into_stage2(model: AdaSlot, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Warm start: load every tensor of `state_dict` into `model`; only the selector may be missing.

    Works for stage 1 -> stage 2 (the score network stays freshly initialised), and for same-stage loads
    (K is not part of any tensor). Returns the names of the parameters left at their initial values.
    Raises AdaslotError naming the first offending key (unexpected, missing, or wrong shape); the model is
    untouched then.
    """
    own = model.state_dict()
    for key, value in state_dict.items():
        if key not in own:
            raise AdaslotError(f"warm start: checkpoint tensor {key!r} has no place in this model "
                               "(different architecture or a stage-2 checkpoint into a stage-1 model?)")
        if tuple(own[key].shape) != tuple(value.shape):
            raise AdaslotError(f"warm start: {key!r} has shape {tuple(value.shape)} in the checkpoint but "
                               f"{tuple(own[key].shape)} in the model; use the same preset for both stages")
    missing = [k for k in own if k not in state_dict]
    bad = [k for k in missing if not k.startswith(SELECTOR_PREFIX)]
    if bad:
        raise AdaslotError(f"warm start: checkpoint lacks {bad[0]!r} (only the selector may be missing)")
    model.load_state_dict(dict(state_dict), strict=False)
    return missing
