"""The convolutional baselines capsule networks are compared with."""

from capskeras.models import baselines
from capskeras.models import heads
from capskeras.models.study import StudyModel
from capskeras.tasks.base import register_task
from capskeras.tasks.mnist import MnistTask


def _classifier(features, dropout, name):
    model = StudyModel(
        features,
        heads.ClassificationHead(hidden_units=(), dropout=dropout, name="class_head"),
        name=name,
    )
    model.build((None,) + tuple(features.input_shape[1:]))
    return model


@register_task("lenet5")
class LeNet5Task(MnistTask):
    """LeNet5 (ReLU, average pooling) under a softmax layer."""

    def build_model(self, pretrained):
        return _classifier(baselines.lenet5_features(self.image_shape()), 0.0, "lenet5")


@register_task("cnn_baseline")
class CnnBaselineTask(MnistTask):
    """The plain CNN Sabour et al. compare CapsNet with, dropout before its softmax."""

    def build_model(self, pretrained):
        return _classifier(baselines.cnn_baseline_features(self.image_shape()), 0.5,
                           "cnn_baseline")
