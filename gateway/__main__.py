from gateway.cli._main import main

raise SystemExit(main())
