from hubtool.cli import main

raise SystemExit(main())
