"""The absl trainer: flags -> config -> model -> fit -> export."""
