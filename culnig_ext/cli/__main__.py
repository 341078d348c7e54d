"""``python -m culnig_ext.cli``: the ``culnig`` command."""
import sys

from culnig_ext.cli.main import main

sys.exit(main())
