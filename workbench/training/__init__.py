"""Training scripts, one file per artefact, each with ``parse_args(argv)`` and ``main(args)``.

| command                       | module                          | artefact                          |
|-------------------------------|---------------------------------|-----------------------------------|
| ``workbench train-classifier``| :mod:`workbench.training.classifier` | tiny-world CNN / ViT          |
| ``workbench train-vae``       | :mod:`workbench.training.vae`   | the tiny base's ``AutoencoderKL`` |
| ``workbench train-base``      | :mod:`workbench.training.base`  | the tiny base's UNet              |
| ``workbench train-inverter``  | :mod:`workbench.training.featinv` | a FeatInv ControlNet            |
| ``make weights``              | :mod:`workbench.training.all`   | everything above, in order        |
"""
