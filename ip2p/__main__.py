"""``python -m ip2p …`` (and ``accelerate launch … -m ip2p generate …``): the ``ip2p`` command."""

import sys

from .cli.main import main

sys.exit(main())
