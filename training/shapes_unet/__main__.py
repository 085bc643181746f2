"""``python -m training.shapes_unet`` (from the repository root): train the embedded shapes model."""

from training.shapes_unet.train import main

raise SystemExit(main())
