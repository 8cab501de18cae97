"""``workbench layers MODEL``: print the layer table of a shipped or timm model (random weights for timm names
unless ``--pretrained``)."""
from __future__ import annotations

import argparse


def parse_args(argv=None):
    from . import HelpFormatter

    p = argparse.ArgumentParser(prog="workbench layers", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("model", help="tinyworld-cnn, tinyworld-vit or any timm name")
    p.add_argument("--pretrained", action="store_true", help="load pretrained timm weights (needs the hub or a cache)")
    p.add_argument("--spatial", action="store_true", help="only layers with a spatial map")
    return p.parse_args(argv)


def main(args) -> int:
    import pandas as pd

    from ..layers import layer_table
    from ..models import load_classifier
    from ..zoo import SHIPPED_CLASSIFIERS

    pretrained = args.pretrained or args.model in SHIPPED_CLASSIFIERS
    table = layer_table(load_classifier(args.model, pretrained=pretrained), spatial=args.spatial)
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.to_string(index=False))
    return 0
