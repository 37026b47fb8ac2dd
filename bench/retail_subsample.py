"""A share of Online Retail's customers, as a data folder of its own: the defaults on less
data than they were chosen on (bench/RESULTS.md, "The defaults on less data").

    python bench/retail_subsample.py --share 0.3 --out /tmp/retail30
    TFREC_DATA=/tmp/retail30 tfrec train --config tfrec/configs/online_retail.yaml \\
        --run-dir runs/sub30/s42 --set train.seed=42
    TFREC_DATA=/tmp/retail30 tfrec evaluate --run runs/sub30/s42 \\
        --baselines popularity,tfidf_text,ease,itemknn --no-ablations

Reads `online_retail/online_retail.csv.gz` from the data folder (--data, `TFREC_DATA`,
then ../shared/data) and writes the rows of a fixed share of the customers (by a CRC-32 of
the customer id; rows without one by their invoice) to
OUT/online_retail/online_retail.csv.gz, the same layout, so any tfrec command reads it as
it reads the whole file. The slice is written outside the project: never commit it.
"""

from __future__ import annotations

import argparse
import os
import sys
import zlib
from pathlib import Path

RELATIVE = Path("online_retail") / "online_retail.csv.gz"


def data_folder(flag: str | None) -> Path:
    if flag:
        return Path(flag)
    if os.environ.get("TFREC_DATA"):
        return Path(os.environ["TFREC_DATA"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--share", type=float, required=True,
                        help="the share of the customers kept, in (0, 1], in whole percents")
    parser.add_argument("--out", required=True, help="the data folder to write")
    parser.add_argument("--data", help="the data folder to read (default: TFREC_DATA, then "
                                       "../shared/data)")
    args = parser.parse_args(argv)
    if not 0.01 <= args.share <= 1:
        parser.error(f"--share must be in [0.01, 1], got {args.share}")
    source = data_folder(args.data) / RELATIVE
    if not source.exists():
        parser.error(f"no Online Retail file at {source} (give --data or set TFREC_DATA)")
    out = Path(args.out) / RELATIVE
    if out.resolve() == source.resolve():
        parser.error("--out is the data folder read from: the slice would replace the data")

    import numpy as np
    import pandas as pd

    frame = pd.read_csv(source, dtype=str, keep_default_na=False)
    key = np.where(frame["CustomerID"] != "", frame["CustomerID"], "inv" + frame["InvoiceNo"])
    bucket = np.fromiter((zlib.crc32(k.encode()) % 100 for k in key), np.int64, len(key))
    kept = frame[bucket < round(args.share * 100)]  # whole percents
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    kept.to_csv(partial, index=False, compression="gzip")
    partial.replace(out)
    customers = kept.loc[kept["CustomerID"] != "", "CustomerID"].nunique()
    print(f"{out}: {len(kept):,} of {len(frame):,} rows, {customers:,} of "
          f"{frame.loc[frame['CustomerID'] != '', 'CustomerID'].nunique():,} customers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
