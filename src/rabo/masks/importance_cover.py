"""``importance-cover``: importance masks that keep the largest cover number the capacities allow.

The paper's bound decreases with the cover C_x = min_j N_x^{t,j} (rate O(1/√(C_x·T))), but
``importance`` gives every client the same top channels: with capacities {1, ½, ¼, ⅛, 1/16}
(two clients each) the bottom half of a 64-channel layer is trained by the two full clients
only (channel cover 2), while Σ r_i = 3.875. This policy ranks each layer's channels by
importance as ``importance`` does (‖w_c‖₂ of the current global model) and tiles the clients'
windows down that ranking as ``coverage`` tiles them over channel indices.

The rule, per group of C channels, with widths w_i = ⌈r_i·C⌉ and L = Σ_i w_i = q·C + ρ
(0 ≤ ρ < C):

- Any choice of w_i distinct channels per client gives Σ_c N_c = L, so min_c N_c ≤ q; and
  q ≥ ⌊Σ_i r_i⌋ since w_i ≥ r_i·C.
- Clients are taken by capacity, smallest first (ties in round order); client k keeps ranks
  [s_k, s_k + w_k) mod C of the importance ranking, s_k = Σ_{j<k} w_j mod C (the windows laid
  end to end from the top, wrapping at the bottom; a window of w ≤ C ranks never holds a channel
  twice).
- So the channel of rank p is kept by N(p) = q + 1 clients for p < ρ and by q for p ≥ ρ: every
  channel by at least q ≥ ⌊Σ r_i⌋ (the most any placement allows), N non-increasing down the
  ranking, and the extra covers on the ρ most important channels. Among cover vectors with
  minimum q, this one is the most even (each N within one of L/C).
- The smallest client keeps exactly ``importance``'s top ⌈r·C⌉ channels; at Σ w_i ≤ C (one
  client, or few small ones) every channel is kept at most once and the top L are kept; with
  every client at r = 1 all clients keep everything.

Example (capacities 1, 1, ½, ½, ¼, ¼, ⅛, ⅛, 1/16, 1/16 on 64 channels): L = 248 = 3·64 + 56, so
ranks 0–55 are kept by 4 clients, ranks 56–63 by 3 (``importance``: ranks 0–3 by 10, …, ranks
32–63 by 2). The clients at 1/16 keep ranks 0–3 and 4–7, at ⅛ 8–15 and 16–23, at ¼ 24–39 and
40–55, at ½ 56–63 with 0–23 and 24–55, at 1 everything.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..submodel import ChannelPlan, Params, SubmodelIndex
from .base import MaskPolicy, channel_norms, ranking, tile


@dataclass(frozen=True)
class ImportanceCover(MaskPolicy):
    """Windows tiled down each group's importance ranking from the top, smallest client first:
    every channel kept by ⌊Σ w_i / C⌋ or one more clients, more important channels by no fewer."""

    name = "importance-cover"

    def select(self, plan: ChannelPlan, params: Params, capacities: Sequence[float],
               round: int, rng: np.random.Generator) -> list[SubmodelIndex]:
        norms = channel_norms(plan, params)
        widths = [plan.widths(r) for r in capacities]
        order = sorted(range(len(capacities)), key=lambda k: capacities[k])
        out: list[SubmodelIndex] = [{} for _ in capacities]
        for g, channels in plan.groups.items():
            ranked = ranking(norms[g])
            for k, ranks in zip(order, tile(channels, 0, [widths[k][g] for k in order])):
                out[k][g] = torch.sort(ranked[ranks]).values
        return out
