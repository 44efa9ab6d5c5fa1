from __future__ import annotations

import sys

if sys.argv[1:2] == ["planner"]:
    from bench.planner import main as planner_main

    sys.exit(planner_main(sys.argv[2:]))

from bench.run import main

sys.exit(main())
