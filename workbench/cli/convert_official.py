"""``workbench convert-official CKPT --out DIR``: turn an official FeatInv checkpoint (AI4HealthUOL/FeatInv, a
PyTorch Lightning ``.ckpt``) into a workbench inverter folder that ``wb.load_inverter(DIR)`` reads.

    workbench convert-official control_featinv_convnext_fin.ckpt --out inverters/official

A ``.ckpt`` is a pickle, and unpickling can run any code the file names: it is read with
``torch.load(weights_only=True)`` (tensors and plain containers only), never unpickled; a full Lightning checkpoint,
which also pickles hyper-parameters and callbacks, is refused with the one line that saves its state dict as
``.safetensors`` (run it where the file is trusted), which converts. The folder records the base
(``lambdalabs/miniSD-diffusers``, loaded by name, never copied), the classifier at 288 px, the official prompt, and
in ``card.json`` the ``official`` preset's sampler. See ``workbench/convert_official.py`` for the key mapping.
"""
from __future__ import annotations

import argparse


def parse_args(argv=None):
    from ..convert_official import OFFICIAL_NUM_HEADS
    from ..presets import MINISD

    p = argparse.ArgumentParser(prog="workbench convert-official", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="the official .ckpt (or a .safetensors of its state dict)")
    p.add_argument("--out", required=True, help="the inverter folder to write")
    p.add_argument("--base", default=MINISD, help="the diffusion base the folder records (default: %(default)s)")
    p.add_argument("--classifier", default=None, help="the classifier of the maps (default: the official preset's)")
    p.add_argument("--layer", default=None, help="its layer (default: the official preset's, stages.3)")
    p.add_argument("--feature-shape", type=int, nargs=3, default=None, metavar=("C", "H", "W"),
                   help="the maps' shape (default: the official preset's, 1024 9 9)")
    p.add_argument("--num-heads", type=int, default=OFFICIAL_NUM_HEADS,
                   help="attention heads of the official yaml (default: %(default)s), not recorded in the weights")
    p.add_argument("--fp16", action="store_true", help="store half-precision weights (default: float32, exact)")
    return p.parse_args(argv)


def main(args) -> int:
    from ..convert_official import convert_official

    out = convert_official(args.checkpoint, args.out, fp16=args.fp16,
                           base=args.base, classifier=args.classifier, layer=args.layer,
                           feature_shape=args.feature_shape, num_heads=args.num_heads)
    print(f"wrote {out}: load it with wb.load_inverter({str(out)!r}), sample with its card's sampler")
    return 0
