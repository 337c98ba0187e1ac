"""``python -m sbstore`` is the ``sbstore`` command."""
from sbstore.cli import main

raise SystemExit(main())
