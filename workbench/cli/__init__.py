"""The ``workbench`` command line.

    workbench demo                     invert held-out tiny-world images, write outputs/demo.png and a table
    workbench layers MODEL             print a model's layer table
    workbench invert --classifier NAME --layer NAME --image PATH [--samples 4] [--out FILE]
    workbench train-classifier | train-vae | train-base | train-inverter ...   (see --help of each)
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": "workbench.cli.demo",
    "invert": "workbench.cli.invert",
    "layers": "workbench.cli.layers",
    "train-classifier": "workbench.training.classifier",
    "train-vae": "workbench.training.vae",
    "train-base": "workbench.training.base",
    "train-inverter": "workbench.training.featinv",
    "train-decoder": "workbench.training.decoder",
    "evaluate": "workbench.cli.evaluate",
}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("\ncommands: " + ", ".join(COMMANDS))
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        import difflib

        close = difflib.get_close_matches(cmd, list(COMMANDS), n=1)
        print(f"workbench: unknown command {cmd!r}" + (f"; did you mean {close[0]!r}?" if close else "")
              + f"\ncommands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[cmd])
    result = module.main(module.parse_args(rest))
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
