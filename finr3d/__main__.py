import sys

from finr3d.cli import main

sys.exit(main())
