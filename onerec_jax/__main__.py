"""`python -m onerec_jax` runs the `onerec-jax` command."""

import sys

from onerec_jax.cli import main

sys.exit(main())
