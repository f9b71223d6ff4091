"""``python -m jaxadv`` is the ``jaxadv`` command line."""

from jaxadv.cli import main

raise SystemExit(main())
