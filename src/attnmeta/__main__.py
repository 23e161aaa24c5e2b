from attnmeta.cli import main

raise SystemExit(main())
