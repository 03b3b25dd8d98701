import sys

from loop.cli.main import main

sys.exit(main())
