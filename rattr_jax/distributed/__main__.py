"""``python -m rattr_jax.distributed <rattr command> [args]``: one process of a job.

Calls `rattr_jax.distributed.initialize` (from the environment `rattr launch`
sets, or a cluster manager's), then runs the ``rattr`` command line. Only
process 0's standard output is kept (``RATTR_ALL_OUTPUT=1`` keeps all).
"""

import os
import sys

from rattr_jax.distributed import _multihost, initialize

if __name__ == "__main__":
  try:
    initialize()
  except ValueError as e:
    print(f"rattr: error: {e}", file=sys.stderr)
    sys.exit(2)
  # Process 0 prints the command's output; the others keep only stderr
  # (errors, warnings). RATTR_ALL_OUTPUT=1 keeps every process's stdout.
  if os.environ.get(_multihost.ENV_PROCESS_ID, "0") not in ("", "0") and not os.environ.get(
      "RATTR_ALL_OUTPUT"):
    sys.stdout = open(os.devnull, "w")
  from rattr_jax.cli import main
  sys.exit(main(sys.argv[1:]))
