import sys

from jnas.cli import main

sys.exit(main())
