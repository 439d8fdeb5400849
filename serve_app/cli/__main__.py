"""`python -m serve_app.cli`: the `animegan` command."""

import sys

from serve_app.cli.main import main

sys.exit(main())
