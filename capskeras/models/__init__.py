"""Encoders, heads and whole models, built from `capskeras.layers`."""

from capskeras.models.autoencoder import Autoencoder
from capskeras.models.capsnet import CapsNet
from capskeras.models.contract import ServableModel
from capskeras.models.contract import check_servable
from capskeras.models.gcnn import build_p4cnn
from capskeras.models.gcnn import build_z2cnn
from capskeras.models.heads import ClassificationHead
from capskeras.models.heads import ReconstructionHead
from capskeras.models.registry import ENCODERS
from capskeras.models.registry import HEADS
from capskeras.models.registry import build_study_model
from capskeras.models.registry import register_encoder
from capskeras.models.study import StudyModel
