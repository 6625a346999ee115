"""Adapters for other libraries (each imports its library lazily: fusedloss works without them)."""
