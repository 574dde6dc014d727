import sys

from sandbox.confine.launcher import main

sys.exit(main())
