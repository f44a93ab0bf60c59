import sys

from vrtk.cli import main

sys.exit(main())
