"""Trainer of the embedded flow model (`shapes-flow`): an SD3-shaped MM-DiT on the shapes world."""
