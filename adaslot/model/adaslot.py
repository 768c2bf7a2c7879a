"""The AdaSlot / DINOSAUR model after the frozen encoder:
features [B, T, D] -> input MLP -> slot attention -> (stage 2) selector -> MLP decoder -> (merging).
The stage-2 selector is AdaSlot's Gumbel score network, or quality-guided selection on the slot-attention
map (`cfg.selector`; docs/method.md#quality-selection). The keep rule and slot merging together are the
model's inference method (docs/adaptive.md): every caller (eval, segment, the Python API, validation) gets
the keep decision, the merged groups and the segment masks from this one forward.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from adaslot.config import ModelConfig
from adaslot.errors import AdaslotError
from adaslot.model.decoder import MLPDecoder
from adaslot.model.merge import mean_groups, merge_groups, merged_keep, slot_features, sum_groups
from adaslot.model.quality import quality_select
from adaslot.model.selector import KEEP_MODES, GumbelSelector
from adaslot.model.slot_attention import SlotAttention, two_layer_mlp

SELECTOR_PREFIX = "selector."


@dataclass
class ModelOutput:
    """slots [B, K, S], alpha [B, K, T] (decoder masks), recon [B, T, D], keep [B, K] hard 0/1 (stage 2 with
    selection on, else None), keep_logits [B, K, 2] (index 1 = keep; Gumbel selector only, else None), attn
    [B, K, T] (slot attention, last iteration, softmax over slots), groups [B, K] long (slot merging on:
    groups[b, k] = the lowest slot index of k's group; None: no merging)."""

    slots: torch.Tensor
    alpha: torch.Tensor
    recon: torch.Tensor
    keep: torch.Tensor | None
    keep_logits: torch.Tensor | None
    attn: torch.Tensor
    groups: torch.Tensor | None = None

    @property
    def segment_alpha(self) -> torch.Tensor:
        """[B, K, T]: each group's masks summed into its representative row (others 0); alpha without
        merging. The masks every label map is made from."""
        return self.alpha if self.groups is None else sum_groups(self.alpha, self.groups)

    @property
    def segment_keep(self) -> torch.Tensor | None:
        """[B, K] bool: the segments (kept slots, one per merged group); its row sum is the segment count.
        None: every slot is a segment (stage 1 without merging)."""
        if self.groups is None:
            return None if self.keep is None else self.keep.detach() > 0.5
        return merged_keep(self.groups, self.keep)


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
        self.selector = (GumbelSelector(cfg.slot_dim, cfg.selector_hidden, context=cfg.selector_context)
                         if gumbel else None)
        self.decoder = MLPDecoder(cfg.slot_dim, cfg.feature_dim, cfg.num_tokens, tuple(cfg.decoder_hidden),
                                  cfg.split_first_layer)

    def forward(self, features: torch.Tensor, slots_init: torch.Tensor | None = None,
                gumbel_noise: torch.Tensor | None = None, keep_mode: str | None = None,
                select: bool = True) -> ModelOutput:
        """features [B, T, D]; slots_init [B, K, S] replaces the sampled S0; gumbel_noise [B, K, 2] replaces
        the sampled Gumbel noise; keep_mode "gumbel" (default in train mode) or "deterministic" (default in
        eval mode). With both tensors given, the forward is a deterministic function of the inputs.
        select=False (a selection warm-up in training): no keep decision, every slot decodes as in stage 1.
        `self.cfg` is the inference method (keep rule, merging): eval mode merges when cfg.merge_slots > 0;
        train mode only with cfg.merge_in_training."""
        b, cfg = features.shape[0], self.cfg
        if slots_init is None:
            slots_init = self.slot_attention.sample_init(b, cfg.num_slots)
        if features.shape[1:] != (cfg.num_tokens, cfg.feature_dim):
            raise AdaslotError(
                f"features have shape {tuple(features.shape[1:])} per sample, the model expects "
                f"({cfg.num_tokens}, {cfg.feature_dim}); check the encoder/preset")
        inputs = self.input_mlp(features)
        slots, attn = self.slot_attention(inputs, slots_init)
        keep, keep_logits = self._keep(slots, attn, gumbel_noise, keep_mode, select)
        if keep is not None and cfg.reassign_kept:  # docs/method.md#count-options: survivors take the tokens
            slots, attn = self.slot_attention.reassign(inputs, slots, keep)
        merging = cfg.merge_slots > 0 and (cfg.merge_in_training or not self.training)
        groups: torch.Tensor | None
        if merging and cfg.merge_in_training:  # SOLV: decode each group's mean slot (method.md#count-options)
            groups = merge_groups(slots, cfg.merge_slots, keep=keep)
            rep = merged_keep(groups).to(slots.dtype)
            decode_keep = rep if keep is None else keep * rep
            sparse = cfg.sparse_decoding and torch.is_grad_enabled()
            recon, alpha = self.decoder(mean_groups(slots, groups), decode_keep, sparse=sparse)
            return ModelOutput(slots=slots, alpha=alpha, recon=recon, keep=keep, keep_logits=keep_logits,
                               attn=attn, groups=groups)
        sparse = cfg.sparse_decoding and keep is not None and torch.is_grad_enabled()
        recon, alpha = self.decoder(slots, keep, sparse=sparse)
        groups = None
        if merging:  # docs/method.md#slot-merging: a group's masks are summed (ModelOutput.segment_alpha)
            vectors = slots if cfg.merge_on == "slots" else slot_features(alpha, features)
            groups = merge_groups(vectors, cfg.merge_slots, keep=keep)
        return ModelOutput(slots=slots, alpha=alpha, recon=recon, keep=keep, keep_logits=keep_logits,
                           attn=attn, groups=groups)

    def _keep(self, slots: torch.Tensor, attn: torch.Tensor, gumbel_noise: torch.Tensor | None,
              keep_mode: str | None, select: bool) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The stage-2 keep decision by cfg.selector -> (keep [B, K] | None, keep_logits [B, K, 2] | None)."""
        cfg = self.cfg
        if not (cfg.adaptive and select):
            return None, None
        if cfg.selector == "quality":
            keep = quality_select(attn, k_min=cfg.quality_k_min, tau=cfg.quality_tau, rho=cfg.quality_rho,
                                  alpha=cfg.quality_alpha).to(slots.dtype)
            return keep, None
        if self.selector is None:
            raise AdaslotError("the adaslot keep rule needs the Gumbel score network, which this model lacks")
        mode = keep_mode or ("gumbel" if self.training else "deterministic")
        if mode not in KEEP_MODES:
            raise AdaslotError(f"keep_mode must be one of {KEEP_MODES}, got {mode!r}")
        keep_logits: tuple[torch.Tensor, torch.Tensor] = self.selector(slots, mode, gumbel_noise)
        return keep_logits


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
