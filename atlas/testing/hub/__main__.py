"""`python -m atlas.testing.hub --models DIR`: serve a folder of repos as a local Hub."""

from atlas.testing.hub.server import main

raise SystemExit(main())
