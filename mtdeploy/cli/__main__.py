import sys

from mtdeploy.cli import main

sys.exit(main())
