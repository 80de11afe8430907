"""One module per peer queue library; each runs in its own venv under bench/.venv/<peer>/."""
