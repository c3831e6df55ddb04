import sys

from heed.cli import main

sys.exit(main())
