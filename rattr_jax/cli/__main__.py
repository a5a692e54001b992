import sys

from rattr_jax.cli import main

sys.exit(main())
