from pmp.cli import main

raise SystemExit(main())
