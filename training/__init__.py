"""Training code of the models invedit ships (not installed with the package): run from the repository root."""
