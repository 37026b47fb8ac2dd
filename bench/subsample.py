"""A share of a public data set's users, as a data folder of its own: the defaults on less
data than they were chosen on (bench/RESULTS.md, "The defaults on less data").

    python bench/subsample.py --share 0.3 --out /tmp/retail30
    python bench/subsample.py --layout goodbooks --share 0.3 --out /tmp/goodbooks30
    TFREC_DATA=/tmp/retail30 tfrec train --config tfrec/configs/online_retail.yaml \\
        --run-dir runs/sub30/s42 --set train.seed=42
    TFREC_DATA=/tmp/retail30 tfrec evaluate --run runs/sub30/s42 \\
        --baselines popularity,tfidf_text,ease,itemknn --no-ablations

Reads the data set from the data folder (--data, `TFREC_DATA`, then ../shared/data) and
writes the rows of a fixed share of its users (by a CRC-32 of the user id) to OUT in the
same layout, so any tfrec command reads it as it reads the whole data set:
`online_retail`: online_retail/online_retail.csv.gz, a share of the customers (rows
without a customer id by their invoice); `goodbooks`: goodbooks_10k/ratings.csv.gz and
to_read.csv.gz, a share of the readers, books.csv.gz whole. The slice is written outside
the project: never commit it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import zlib
from pathlib import Path

FILES = {"online_retail": ("online_retail", ["online_retail.csv.gz"], []),
         "goodbooks": ("goodbooks_10k", ["ratings.csv.gz", "to_read.csv.gz"], ["books.csv.gz"])}


def data_folder(flag: str | None) -> Path:
    if flag:
        return Path(flag)
    if os.environ.get("TFREC_DATA"):
        return Path(os.environ["TFREC_DATA"])
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layout", choices=sorted(FILES), default="online_retail",
                        help="the data set (default: online_retail)")
    parser.add_argument("--share", type=float, required=True,
                        help="the share of the users kept, in [0.01, 1], in whole percents")
    parser.add_argument("--out", required=True, help="the data folder to write")
    parser.add_argument("--data", help="the data folder to read (default: TFREC_DATA, then "
                                       "../shared/data)")
    args = parser.parse_args(argv)
    if not 0.01 <= args.share <= 1:
        parser.error(f"--share must be in [0.01, 1], got {args.share}")
    folder, sliced, whole = FILES[args.layout]
    source, out = data_folder(args.data) / folder, Path(args.out) / folder
    for name in sliced + whole:
        if not (source / name).exists():
            parser.error(f"no {name} at {source} (give --data or set TFREC_DATA)")
    if out.resolve() == source.resolve():
        parser.error("--out is the data folder read from: the slice would replace the data")

    import numpy as np
    import pandas as pd

    out.mkdir(parents=True, exist_ok=True)
    for name in sliced:
        frame = pd.read_csv(source / name, dtype=str, keep_default_na=False)
        if args.layout == "online_retail":
            user = frame["CustomerID"]
            key = np.where(user != "", user, "inv" + frame["InvoiceNo"])
        else:
            user = key = frame["user_id"]
        bucket = np.fromiter((zlib.crc32(k.encode()) % 100 for k in key), np.int64, len(key))
        kept = frame[bucket < round(args.share * 100)]  # whole percents
        partial = out / (name + ".partial")
        kept.to_csv(partial, index=False, compression="gzip")
        partial.replace(out / name)
        users = user[user != ""]
        print(f"{out / name}: {len(kept):,} of {len(frame):,} rows, "
              f"{users[bucket[user != ''] < round(args.share * 100)].nunique():,} of "
              f"{users.nunique():,} users")
    for name in whole:
        shutil.copyfile(source / name, out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
