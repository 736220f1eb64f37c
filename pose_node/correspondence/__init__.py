"""Per-detection pose: the correspondence network and probabilistic PnP (EPro-PnP)."""
