"""Compositionality probes: is a layer's map a composite of parts that can be spliced, blended and read out?

Four probes, following FeatInv's "composite nature of the feature space", each in its own module and all
importable from here:

* **spatial splicing** (:mod:`.splicing`, with the regions' readings in :mod:`.regions`): one region of the map
  from image A, the rest from image B; the inversion should show A's object in A's region and B's in B's region;
* **interpolation and arithmetic** (:mod:`.sequences`): blend maps linearly, or compute ``A - B + C``, invert each
  step and score the class probabilities along it;
* **factor probes** (:mod:`.factor_probes`): linear probes from each layer to each known tiny-world factor, a
  layer x factor table of decodability;
* **factor preservation** (:mod:`.preservation`): which factors survive inversion, read out from the
  reconstructions by probes trained on real images.

Example:
    >>> a, b, info = make_splice_pairs(8, seed=0)
    >>> table, samples = splice_study(cnn, inverter, a, b, info["mask"], num_inference_steps=8)
    >>> factor_probes(cnn, x, ds.factor_table(), ["stages.1", "stages.3"])      # layers x factors
"""
from __future__ import annotations

from .factor_probes import PROBED_FACTORS, factor_probes, probe_features
from .preservation import FactorReadout, fit_factor_readout, preservation_table
from .regions import invariance_by_region, object_masks, region_probabilities
from .sequences import arithmetic, interpolate, sequence_study, trend
from .splicing import make_splice_pairs, splice, splice_study

__all__ = ["PROBED_FACTORS", "FactorReadout", "arithmetic", "factor_probes", "fit_factor_readout", "interpolate",
           "invariance_by_region", "make_splice_pairs", "object_masks", "preservation_table", "probe_features",
           "region_probabilities", "sequence_study", "splice", "splice_study", "trend"]
