from monitor.app.cli import main

raise SystemExit(main())
