"""``python -m knowledge_base.sample DEST [--seed N]``: write the sample KB to DEST."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from knowledge_base.sample import build_sample_kb


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m knowledge_base.sample", description=__doc__)
    ap.add_argument("dest", type=Path, help="output directory")
    ap.add_argument("--seed", type=int, default=0, help="changes incidental rendering details only")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    kb = build_sample_kb(args.dest, seed=args.seed)
    logging.getLogger("knowledge_base.sample").info("cases: %s  eval: %s", kb.cases_jsonl, kb.eval_jsonl)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
