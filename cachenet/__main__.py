import sys

from cachenet.cli import main

sys.exit(main())
