"""`python -m loadtest.peers`: see loadtest.peers.bench."""

from loadtest.peers.bench import main

raise SystemExit(main())
