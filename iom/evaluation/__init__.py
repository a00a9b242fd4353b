"""Evaluation of IoM hash codes: matching, identification and unlinkability."""
