"""`python -m cifar_hpo.search.cli`: the same as the `hpo` console script."""

import sys

from cifar_hpo.search.cli.main import main

sys.exit(main())
