"""Protected templates in use: packing, search, store, service."""
