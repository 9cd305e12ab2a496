"""`python -m dyllm ...` is the `dyllm` command; it is also what `torchrun ... -m dyllm ...` runs
in each process (docs/tensor-parallel.md)."""

from dyllm.cli import main

raise SystemExit(main())
