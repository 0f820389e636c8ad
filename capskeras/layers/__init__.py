"""Public Keras layers, one per module."""

from capskeras import onednn
from capskeras.layers.capsule_dense import CapsuleDense
from capskeras.layers.capsule_length import CapsuleLength
from capskeras.layers.capsule_mask import CapsuleMask
from capskeras.layers.class_matrix_capsules import ClassMatrixCapsules
from capskeras.layers.conv_matrix_capsules import ConvMatrixCapsules
from capskeras.layers.fast_conv2d import FastConv2D
from capskeras.layers.group_batch_normalization import GroupBatchNormalization
from capskeras.layers.group_conv2d import GroupConv2D
from capskeras.layers.group_pooling import GroupPooling
from capskeras.layers.k_sparse import KSparse
from capskeras.layers.pred_caps import PredCapsLayer
from capskeras.layers.primary_capsules import PrimaryCapsules
from capskeras.layers.primary_matrix_capsules import PrimaryMatrixCapsules
from capskeras.layers.rank_mask import RankMask
from capskeras.layers.rotated_conv2d import RotatedConv2D
from capskeras.layers.stop_gradient import StopGradient

# Every capskeras model imports these layers, and on the TensorFlow backend
# Keras has started TensorFlow by now: say once if it runs without oneDNN
# where that costs speed (on other backends this does nothing).
onednn.warn_if_off()
