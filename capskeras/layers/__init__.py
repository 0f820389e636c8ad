"""Public Keras layers, one per module."""

from capskeras.layers.capsule_dense import CapsuleDense
from capskeras.layers.capsule_length import CapsuleLength
from capskeras.layers.capsule_mask import CapsuleMask
from capskeras.layers.k_sparse import KSparse
from capskeras.layers.pred_caps import PredCapsLayer
from capskeras.layers.primary_capsules import PrimaryCapsules
from capskeras.layers.rank_mask import RankMask
from capskeras.layers.stop_gradient import StopGradient
