"""Deep IoM hashing: layers, losses, P×K sampling, training, the hasher, code keying, random IoM."""
