"""The training code of the embedded shapes model, one module per stage; `invedit.toy.train` is its CLI."""
