"""tf.data pipelines on TensorFlow Datasets, and image transforms."""

from capskeras.data.builders import DatasetNotFoundError
from capskeras.data.builders import prepared_builder
from capskeras.data.mnist import IMAGE_SHAPE
from capskeras.data.mnist import NUM_CLASSES
from capskeras.data.mnist import load_mnist
from capskeras.data.affnist import AffnistRegenConfig
from capskeras.data.affnist import load_affnist
from capskeras.data.rotated_mnist import RotatedMnist
from capskeras.data.rotated_mnist import RotatedMnistRegen
from capskeras.data.rotated_mnist import RotatedMnistRegenConfig
from capskeras.data.rotated_mnist import load_rotated_mnist
from capskeras.data.smallnorb import load_smallnorb
