"""``python -m workbench.cli COMMAND ...`` (as ``accelerate launch -m workbench.cli`` runs it): the ``workbench`` command."""
import sys

from . import main

sys.exit(main())
