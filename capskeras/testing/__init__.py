"""Shared test helpers: serialization round trips and freezing checks."""

from capskeras.testing.round_trips import assert_keras_round_trip
from capskeras.testing.round_trips import assert_saved_model_round_trip
from capskeras.testing.round_trips import assert_weights_unchanged_by_fit
from capskeras.testing.round_trips import saved_model_xla_functions
