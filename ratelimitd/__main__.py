import sys

from ratelimitd.cli import main

sys.exit(main())
