"""``python -m service.client`` = ``movinet-client``."""

import sys

from service.client.cli import main

sys.exit(main())
