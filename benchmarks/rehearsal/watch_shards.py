"""Watch a store that `cache-features` is writing: the number of finished shard files over time, written to
a JSON file after every sample (so a run stopped before the command ends still gives its rate).

    python benchmarks/rehearsal/watch_shards.py STORE OUT.json [--every 30] [--until-shards 232]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from pathlib import Path


def shard_files(store: Path) -> int:
    """Finished shard files of the store's features array (each written under a temporary name, renamed)."""
    return sum(
        1
        for f in glob.glob(str(store / "features" / "c" / "**" / "*"), recursive=True)
        if os.path.isfile(f) and not f.endswith(".partial")
    )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("store")
    p.add_argument("out")
    p.add_argument("--every", type=float, default=30.0)
    p.add_argument("--until-shards", type=int, default=232)
    args = p.parse_args()
    store, out = Path(args.store), Path(args.out)
    samples: list[dict[str, float]] = []
    t0 = time.time()
    while True:
        n = shard_files(store)
        samples.append(
            {"t_s": round(time.time() - t0, 1), "shards": n, "load1": round(os.getloadavg()[0], 2)}
        )
        rate = None
        started = [s for s in samples if s["shards"] > 0]
        if len(started) >= 2 and started[-1]["shards"] > started[0]["shards"]:
            a, b = started[0], started[-1]
            rate = (b["shards"] - a["shards"]) / (b["t_s"] - a["t_s"])  # shards per second after the first
        out.write_text(
            json.dumps(
                {
                    "store": str(store),
                    "started_utc": time.strftime("%H:%M:%S", time.gmtime(t0)),
                    "shards_per_s_after_first": rate,
                    "samples": samples,
                },
                indent=1,
            )
            + "\n"
        )
        if n >= args.until_shards:
            break
        time.sleep(args.every)


if __name__ == "__main__":
    main()
