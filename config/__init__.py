"""Application settings, one module per area, each read from the environment."""
