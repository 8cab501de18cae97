"""Training scripts, one file per artefact, each with a config dataclass, ``parse_args(argv) -> config`` and
``main(config)``; no script imports another (what they share is in :mod:`workbench.training.common`, and their
data streams, sharded over the processes of ``accelerate launch``, in :mod:`workbench.training.data`).

| command                                | module                               | config               | artefact                              |
|----------------------------------------|--------------------------------------|----------------------|---------------------------------------|
| ``workbench train-classifier``         | :mod:`workbench.training.classifier` | ``ClassifierConfig`` | tiny-world CNN / ViT                  |
| ``workbench train-vae``                | :mod:`workbench.training.vae`        | ``VAEConfig``        | the tiny base's ``AutoencoderKL``     |
| ``workbench train-base``               | :mod:`workbench.training.base`       | ``BaseConfig``       | the tiny base's UNet                  |
| ``workbench train-inverter``           | :mod:`workbench.training.featinv`    | ``FeatInvConfig``    | a FeatInv ControlNet                  |
| ``workbench train-decoder``            | :mod:`workbench.training.decoder`    | ``DecoderConfig``    | the decoder baseline                  |
| ``make weights``                       | :mod:`workbench.training.all`        |                      | everything above, in order            |
| ``python -m workbench.training.cards`` | :mod:`workbench.training.cards`      |                      | a shipped card's metrics, re-measured |
"""
