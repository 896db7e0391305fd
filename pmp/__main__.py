import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads sleep (see app.py)

from pmp.cli import main  # noqa: E402

raise SystemExit(main())
