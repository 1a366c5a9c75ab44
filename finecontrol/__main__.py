import sys

from finecontrol.cli import main

sys.exit(main())
