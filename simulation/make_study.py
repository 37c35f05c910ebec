"""Write a simulated cervical-spine MR study (stable command-line interface).

    python -m simulation.make_study --protocol {hivd,myelopathy} \\
        --acquisition {conventional,accelerated} --seed N --out DIR \\
        [--vendor {philips,siemens,ge}] [--motion {none,mild,severe}]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from simulation.dicom_study import PROTOCOL_ROLES, write_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulation.make_study", description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", choices=sorted(PROTOCOL_ROLES), required=True)
    parser.add_argument("--acquisition", choices=["conventional", "accelerated"], required=True)
    parser.add_argument("--seed", type=int, required=True, help="phantom patient and noise seed")
    parser.add_argument("--out", type=Path, required=True, help="output folder (one sub-folder per series)")
    parser.add_argument("--vendor", choices=["philips", "siemens", "ge"], default="philips")
    parser.add_argument("--motion", choices=["none", "mild", "severe"], default="none",
                        help="rigid motion and swallowing (on the CE T1 series unless --motion-series all)")
    parser.add_argument("--motion-series", choices=["ce", "all"], default="ce")
    parser.add_argument("--through-plane", action="store_true",
                        help="rigid motion in 3-D: slices also move along their normal (other anatomy per shot)")
    parser.add_argument("--save-truth", action="store_true",
                        help="also write truth.npz: noiseless conventional references and label maps")
    parser.add_argument("--sagittal-slices", type=int, default=13)
    parser.add_argument("--axial-slices", type=int, default=24)
    args = parser.parse_args(argv)
    if args.seed < 0:
        parser.error("--seed must be >= 0")
    start = time.perf_counter()
    records = write_study(args.out, protocol=args.protocol, acquisition=args.acquisition, seed=args.seed,
                          vendor=args.vendor, motion=args.motion, motion_series=args.motion_series,
                          save_truth=args.save_truth, sagittal_slices=args.sagittal_slices,
                          axial_slices=args.axial_slices, through_plane=args.through_plane)
    for r in records:
        print(f"{r.series_number:4d}  {r.role:13s} {r.series_description:28s} {r.n_slices:3d} x {r.rows}x{r.columns}"
              f"  PE {r.phase_encode_direction}  scan time x{r.scan_time_ratio:.2f}  motion {r.motion}")
    print(f"wrote {args.protocol} {args.acquisition} study (seed {args.seed}, {args.vendor}) to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
