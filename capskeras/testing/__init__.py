"""Shared test helpers: serialization round trips, freezing and equivariance checks."""

from capskeras.testing.equivariance import assert_equivariant
from capskeras.testing.equivariance import assert_group_equivariant
from capskeras.testing.round_trips import assert_keras_round_trip
from capskeras.testing.round_trips import assert_saved_model_round_trip
from capskeras.testing.round_trips import assert_weights_unchanged_by_fit
from capskeras.testing.round_trips import saved_model_xla_functions
