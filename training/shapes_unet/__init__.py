"""The training code of the embedded shapes model, one module per stage; `training.shapes_unet.train` is its CLI."""
