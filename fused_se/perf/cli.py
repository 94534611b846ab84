"""python -m fused_se.perf: --traffic (bytes counted, DRAM and time modeled), --host (host
microseconds per call), --kernel-report (registers, spills, access widths of the compiled kernels)."""

from __future__ import annotations

import argparse
import csv
import json
import sys

from .._cli import HelpFormatter, Parser
from . import traffic


def build_parser(prog: str = "python -m fused_se.perf") -> argparse.ArgumentParser:
    p = Parser(
        prog=prog,
        usage=f"{prog} --traffic | --host | --kernel-report [options]",
        description=(
            f"  {prog} --traffic                      SE-ResNet-50's SE shapes\n"
            f"  {prog} --traffic --preset ecapa_tdnn --modes fwd+bwd\n"
            f"  {prog} --traffic --shapes 2,256,L300,16 2,64,8x8x8 --layouts nchw\n"
            f"  {prog} --host\n"
            f"  {prog} --kernel-report --archs 90\n"
            "\n"
            "Performance without a GPU. Every time printed is a model, not a measurement of a GPU."
        ),
        formatter_class=HelpFormatter,
    )
    what = p.add_argument_group("what (one of)").add_mutually_exclusive_group(required=True)
    what.add_argument("--traffic", action="store_true", help="bytes per call, counted; DRAM bytes and time, modeled")
    what.add_argument("--host", action="store_true", help="host microseconds per call, kernel launches stubbed out")
    what.add_argument(
        "--kernel-report", action="store_true", help="registers, spills and access widths of every kernel variant"
    )
    out = p.add_argument_group("outputs")
    out.add_argument("--json", metavar="FILE", help="write the rows as JSON")
    out.add_argument("--csv", metavar="FILE", help="write the rows as CSV")
    traffic.add_arguments(p)
    from . import host

    host.add_arguments(p)
    return p


def write_rows(rows: list[dict], json_path, csv_path) -> None:
    if json_path:
        with open(json_path, "w") as f:
            json.dump(rows, f, indent=1)
    if csv_path and rows:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with open(csv_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


def main(argv=None, prog: str = "python -m fused_se.perf") -> int:
    p = build_parser(prog)
    args = p.parse_args(argv)
    if args.traffic:
        traffic.check_args(p, args)
        printer = traffic.TablePrinter()
        rows = traffic.run_traffic(args, printer)
        printer.close()
    elif args.host:
        from . import host

        if args.model:
            rows = host.run_models(args)
            print(host.format_models(rows))
        else:
            rows = host.run_host(args)
            print(host.format_host(rows))
    else:
        from . import kernel_report

        rows = kernel_report.run_kernel_report(args)
        print(kernel_report.format_report(rows))
    write_rows(rows, args.json, args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
