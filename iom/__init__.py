"""iomface stage 2: deep Index-of-Max hashing on top of a frozen embedding network."""
