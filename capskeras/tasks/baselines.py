"""The convolutional baselines capsule networks are compared with."""

from capskeras.models import baselines
from capskeras.models.study import feature_classifier
from capskeras.tasks.base import register_task
from capskeras.tasks.mnist import MnistTask


@register_task("lenet5")
class LeNet5Task(MnistTask):
    """LeNet5 (ReLU, average pooling) under a softmax layer."""

    def build_model(self, pretrained):
        return feature_classifier(baselines.lenet5_features(self.image_shape()), name="lenet5")


@register_task("cnn_baseline")
class CnnBaselineTask(MnistTask):
    """The plain CNN Sabour et al. compare CapsNet with, dropout before its softmax."""

    def build_model(self, pretrained):
        return feature_classifier(baselines.cnn_baseline_features(self.image_shape()),
                                  dropout=0.5, name="cnn_baseline")
