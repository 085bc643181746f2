"""The embedded toy model: a procedural shapes world and the script that trains a small SD-shaped model."""
