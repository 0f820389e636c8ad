"""capskeras: capsule networks and learned equivariance as Keras 3 layers."""

__version__ = "0.1.0"
